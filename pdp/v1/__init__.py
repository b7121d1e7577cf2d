"""Generated from proto/pdp/v1 by tools/gen_proto.py; do not edit."""
