"""What an entity is, as small integers shared by every file format and model: its OSM
type and its kind. Kept apart from the OSM reader so that training code can use them
without importing pyosmium."""

#: OSM object types, by code (``entities/osm_type`` in dataset.h5).
OSM_TYPES = ("node", "way", "relation")
NODE, WAY, RELATION = range(3)

#: Entity kinds, by code (``entities/kind``): a tagged node, a way, a closed area-like way,
#: an assembled multipolygon/boundary relation, any other relation (its members' geometry).
KINDS = ("point", "line", "polygon", "multipolygon", "relation")
POINT, LINE, POLYGON, MULTIPOLYGON, COLLECTION = range(5)
