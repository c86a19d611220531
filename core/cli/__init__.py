"""The ``endcap`` command line, its supervisor and the plugin scaffold."""
