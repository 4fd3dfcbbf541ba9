"""Code shared by every Lambda function of imagegen (deployed as the CommonLayer)."""
