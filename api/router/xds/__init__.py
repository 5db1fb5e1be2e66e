"""Generated stubs of protos/eagleeye/router/xds (`make protos`)."""
