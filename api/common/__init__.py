"""Generated stubs of protos/eagleeye/common (`make protos`)."""
