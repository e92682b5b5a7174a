package broker

import "time"

// serverClock is a reading of the NATS server's clock: the time in a stream info answer
// (the clock that stamps every message the server stores) and this host's clock when
// the answer came. The server's time later is that time plus what this host's monotonic
// clock counted since, so neither a step of this host's wall clock (NTP, a VM resumed)
// nor its offset from the server's moves it. The monotonic clock stands still while the
// host sleeps: after a sleep it is behind by the sleep until the next answer, which the
// worker's next look at the queue brings.
type serverClock struct {
	server time.Time // as the server said it (no monotonic reading)
	local  time.Time // Config.Now when the answer came (with its monotonic reading)
}

// noteServerTime keeps ts, a stream info answer's time, as the server's clock reading
// (zero, from a server before 2.10, is ignored). The latest answer is kept: the closest
// to the server's clock, the delay of its answer aside (a publish's round trip).
func (s *Store) noteServerTime(ts time.Time) {
	if ts.IsZero() {
		return
	}
	s.sclock.Store(&serverClock{server: ts.UTC(), local: s.cfg.Now()})
}

// clock is this host's clock with its monotonic reading, for spans within this process
// (a cache's age, how long the store has refused writes): Now drops the monotonic reading
// (UTC), so a span taken with it moves with every step of the wall clock.
func (s *Store) clock() time.Time { return s.cfg.Now() }

// ServerNow is the NATS server's time now, by the clock that stamps every stored message
// (a queue message's Enqueued, an entry's Created): read from its last stream info answer
// and carried on by this host's monotonic clock (ADR-0060). Ages of the server's stamps
// are taken against it, not against this host's clock, which may be off or stepped.
// Before the first answer it is this host's clock.
func (s *Store) ServerNow() time.Time {
	c := s.sclock.Load()
	if c == nil {
		return s.Now().Add(s.serverShift)
	}
	return c.server.Add(s.cfg.Now().Sub(c.local) + s.serverShift)
}
