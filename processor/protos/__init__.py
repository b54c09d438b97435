"""Python modules generated from proto/ by proto/generate.sh; do not edit."""
