"""Autoregressive text models (GPT, LSTM) and their generation helpers."""
