"""Label Studio's side: the SDK client and its downloads, the label config, regions and clicks to
pixels and back, the query tasks a round publishes, segmentations and answered regions pushed
back, what annotators are told, annotations taken in, and task images."""
