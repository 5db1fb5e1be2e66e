"""Generated stubs of protos/eagleeye/common/orca (`make protos`)."""
