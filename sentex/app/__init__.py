"""The Streamlit demo app: the ``sentex app`` launcher, page logic, and the page itself (package data)."""
