"""What the pages share (state, strings, charts, outputs, site views). Kept out of `pages/` itself: Streamlit's
legacy discovery lists every top-level `pages/*.py` file as a page, so only the five page scripts live there."""
