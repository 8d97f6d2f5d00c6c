"""What the bench scripts share. Each script puts `benches/` on its path
(`sys.path.insert(0, <its folder>/..)`) and imports from here."""
