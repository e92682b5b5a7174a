package broker

// ListModes are the ways List reads, for tests that check each one.
var ListModes = map[string]func(*Store){
	"by cost": func(s *Store) { s.listMode = listByCost },
	"by scan": func(s *Store) { s.listMode = listByScan },
	"by keys": func(s *Store) { s.listMode = listByKeys },
}

// FramePieces is framePieces, for the fuzz target.
var FramePieces = framePieces

// InboxReply is inboxReply, for its table test.
var InboxReply = inboxReply

// SetPendingLimits sets the limits of the feed's subscription, to make NATS drop.
func (f *JobFeed) SetPendingLimits(msgs, bytes int) error { return f.sub.SetPendingLimits(msgs, bytes) }

// Hold stalls the feed's callback until release, so messages pile up in NATS.
func (f *JobFeed) Hold() (release func()) {
	f.mu.Lock()
	return f.mu.Unlock
}

// JobWildcard is jobWildcard, for its test.
var JobWildcard = jobWildcard

// OnRead calls f after each message the backlog reads.
func (b *Backlog) OnRead(f func(seq uint64)) { b.onRead = f }
