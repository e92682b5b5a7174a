package gateway

import (
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A retry under an Idempotency-Key, reaching a foreman whose clock is a minute ahead of
// the claimant's while the first request is still being submitted (slow, not dead),
// waits for that request's job and replays it (ADR-0060). The claim's deadline was on
// the claimant's clock, read against the retry's: the retry took the claim over at once,
// and the one key made two jobs that both ran. Here both requests go through one
// gateway whose store's clock is ahead of the clock that set the first one's deadline.
func TestIdempotencyClaimOutlivesAClockAhead(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withBroker(brokertest.WithStore(func(c *broker.Config) {
		c.Now = func() time.Time { return time.Now().Add(time.Minute) }
	})))
	ctx := testCtx(t, 30*time.Second)
	entered := make(chan string, 2)
	hold := make(chan struct{})
	unhold := sync.OnceFunc(func() { close(hold) })
	t.Cleanup(unhold)
	var mu sync.Mutex
	first := true
	b.GW.beforeSubmit = func(id string) {
		mu.Lock()
		f := first
		first = false
		mu.Unlock()
		entered <- id
		if f {
			<-hold // the first request is slow between its claim and its record
		}
	}
	type answer struct {
		status   int
		id       string
		replayed bool
	}
	send := func(out chan<- answer) {
		resp, data := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a","messages":[]}`), "Idempotency-Key", "skew")
		var s submitted
		_ = json.Unmarshal(data, &s)
		out <- answer{resp.StatusCode, s.JobID, resp.Header.Get("Idempotent-Replayed") == "true"}
	}
	firstC, retryC := make(chan answer, 1), make(chan answer, 1)
	go send(firstC)
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the first request never claimed its key")
	}
	go send(retryC)
	// A retry that took the claim over enters the submit itself; one that waits does not
	// until the first request ends, a second after here.
	time.AfterFunc(time.Second, unhold)
	a, r := <-firstC, <-retryC
	n, err := b.Broker.Store.QueueLen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a.status != http.StatusAccepted || r.status != http.StatusAccepted || a.id != r.id || !r.replayed || n != 1 {
		t.Fatalf("one Idempotency-Key: first %+v, retry %+v, %d jobs queued; want the first's job replayed, one job", a, r, n)
	}
}
