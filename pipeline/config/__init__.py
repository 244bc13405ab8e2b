"""params.yaml: typed, validated sections, their messages, where the outputs it names live."""
