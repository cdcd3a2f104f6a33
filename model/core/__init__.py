"""The core pipeline: decode (model.io) → check → preprocess → ensemble → explain → decision.
No Streamlit, no training/."""
