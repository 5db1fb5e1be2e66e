"""Generated stubs of protos/eagleeye/detector (`make protos`)."""
