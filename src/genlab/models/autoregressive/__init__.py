"""Autoregressive models: text (GPT, LSTM, with their generation helpers) and images (PixelCNN)."""
