"""The prediction path: preprocess an upload as in training, predict, decode; the prediction record; forwarding to monitoring."""
