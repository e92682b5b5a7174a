package broker

import "time"

// SetPresenceTicks makes Announce send a heartbeat at each receive from ticks, in place
// of its ticker's.
func (s *Store) SetPresenceTicks(ticks <-chan time.Time) { s.presenceTicks = ticks }

// PresenceKey is the presence bucket's key of a boot id.
var PresenceKey = presenceKey
