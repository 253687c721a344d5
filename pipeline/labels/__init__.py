"""Labels out and back in: COCO RLE, segments of a label map, the run reader, exports (COCO JSON, PNG),
overlays and the torch Dataset."""
