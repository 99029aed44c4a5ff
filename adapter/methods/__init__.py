"""Every method, one module each (LatHAdapter a small package). Importing a method module registers it;
`lathadapter.adapter.catalog` imports all of them."""
