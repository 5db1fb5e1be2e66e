"""Generated stubs of protos/eagleeye/detector/testing (`make protos`)."""
