"""Model zoo: the full DATPRL-IR architectures (teachers) and the compact edge students."""
