"""Generated stubs of protos/eagleeye/router (`make protos`)."""
