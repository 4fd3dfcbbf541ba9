"""The local stack: stand-ins for AWS services so the real code runs offline."""
