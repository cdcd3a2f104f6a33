"""What the tests share: image makers, tiny bundles, real servers (Streamlit, Orthanc) and the in-process CLI.
Test modules import from here, never from each other."""
