"""Streamlit dashboards over the Parquet leaderboard."""
