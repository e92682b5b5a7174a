package broker

// ListModes are the ways List reads, for tests that check each one.
var ListModes = map[string]func(*Store){
	"by cost": func(s *Store) { s.listMode = listByCost },
	"by scan": func(s *Store) { s.listMode = listByScan },
	"by keys": func(s *Store) { s.listMode = listByKeys },
}
