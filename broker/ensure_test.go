package broker_test

import (
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A store opened where its streams and buckets already exist as it would make them (a
// restart, a second foreman on one NATS) updates none of them: an update rewrites a
// stream's configuration while other foremen create consumers on it. A configuration
// that asks for more is updated (on a shared NATS no less: ADR-0054).
func TestOpenUpdatesOnlyAChangedStream(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	sub, err := b.Conn.SubscribeSync("$JS.API.STREAM.UPDATE.>")
	if err != nil {
		t.Fatal(err)
	}
	updates := func() []string {
		var subjects []string
		for {
			m, err := sub.NextMsg(0)
			if err != nil {
				return subjects
			}
			subjects = append(subjects, strings.TrimPrefix(m.Subject, "$JS.API.STREAM.UPDATE."))
		}
	}
	open := func(maxQueue int64) *broker.Store {
		s, err := broker.Open(ctx, broker.Config{Conn: b.Conn, MaxQueue: maxQueue})
		if err != nil {
			t.Fatal(err)
		}
		// The targets bucket is made on first use.
		if _, err := s.Targets(ctx); err != nil {
			t.Fatal(err)
		}
		return s
	}
	open(2000)
	updates() // whatever the bundle's own store left differently
	open(2000)
	if got := updates(); len(got) != 0 {
		t.Errorf("a second open with the same configuration updated %v", got)
	}
	open(3000)
	if got := updates(); len(got) != 1 || got[0] != broker.QueueStream {
		t.Errorf("an open with another queue bound updated %v, want %s alone", got, broker.QueueStream)
	}
}
