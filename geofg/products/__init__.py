"""Products made from a finished mosaic for GIS and farm software: legends, per-field tables, polygons."""
