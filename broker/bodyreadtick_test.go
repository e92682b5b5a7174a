package broker_test

import (
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A fetch whose request body, stored apart, takes longer than the queue's AckWait to
// read (a slow object store, a loaded machine) keeps the delivery it fetched: it is kept
// in progress while the body is read, and its ack wait starts afresh once it is. Before,
// nothing ticked until the worker's keep-alive began, after the fetch had returned, and
// the message went to another fetch (another foreman) while this one still read it.
func TestSlowBodyReadKeepsTheDelivery(t *testing.T) {
	t.Parallel()
	const ackWait = time.Second
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.AckWait = ackWait }))
	j, err := b.Store.Submit(ctxT(t), &broker.Job{Model: "m", Kind: broker.KindChat}, bigBody)
	if err != nil || j.BodyRef == "" {
		t.Fatalf("submit: %v (body ref %q); want a body stored apart", err, j.BodyRef)
	}
	other, err := broker.Open(ctxT(t), broker.Config{Conn: b.Conn, AckWait: ackWait}) // another foreman's
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var again *broker.Lease
	var againErr error
	b.Store.SetBodyRead(func(id string) {
		once.Do(func() {
			<-time.After(2 * ackWait) // the read, slower than the ack wait
			// Another fetch of the queue, as another foreman's, while the body is read.
			again, againErr = other.NextWait(ctxT(t), token(t, "m"), 100*time.Millisecond)
		})
	})
	d, err := b.Store.Next(ctxT(t), token(t, "m"))
	if err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("fetch: %+v, %v; want job %s's lease", d, err, j.ID)
	}
	if againErr != nil {
		t.Fatal(againErr)
	}
	if again != nil {
		t.Errorf("job %s delivered again (delivery %d) while its first fetch read its body", again.JobID, again.NumDelivered)
	}
}
