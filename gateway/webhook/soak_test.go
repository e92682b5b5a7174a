package webhook

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// tableSizes is the count of entries in the dispatcher's own tables (lanes, ids, spills,
// receivers' slots), by table: all of them are empty once every delivery ended.
func (d *Dispatcher) tableSizes() map[string]int {
	d.mu.Lock()
	out := map[string]int{"lanes": len(d.lanes), "known": len(d.known), "intake": len(d.intake), "finishing": len(d.finishing),
		"manual": len(d.manual), "held": len(d.held), "spills": len(d.spills), "spilled": len(d.spilled)}
	d.mu.Unlock()
	d.slotsMu.Lock()
	out["slots"] = len(d.slots)
	d.slotsMu.Unlock()
	return out
}

// TestSoakDispatcherTablesEmptyAfterDeliveries runs many jobs' webhooks at receivers that
// answer, fail, hang past the attempt's timeout or refuse the connection, and manual
// redeliveries; once every delivery ended (delivered or given up), the dispatcher's
// tables are empty and its goroutines are back to what they were.
func TestSoakDispatcherTablesEmptyAfterDeliveries(t *testing.T) {
	b := brokertest.New(t)
	var hits atomic.Int64
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	t.Cleanup(ok.Close)
	fail := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	t.Cleanup(fail.Close)
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body) // else net/http does not see the caller hang up
		<-r.Context().Done()
	}))
	t.Cleanup(hang.Close)
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	cfg := fastConfig(b.Store)
	cfg.Attempts = 2
	cfg.Timeout = 100 * time.Millisecond
	cfg.PerReceiver = 2
	d, _ := startDispatcher(t, cfg)
	// Warm: the dispatcher runs all its parts once a delivery went through.
	warm := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: ok.URL}})
	setState(t, b.Store, warm.ID, broker.StateCanceled)
	eventually(t, 15*time.Second, "the warm delivery", func() bool { return hits.Load() == 2 })
	waitConsumerIdle(t, b)
	waitNoPending(t, b.Store)
	d.cfg.Client.CloseIdleConnections()
	base := runtime.NumGoroutine()

	urls := []string{ok.URL, fail.URL, hang.URL, gone.URL}
	n := 120
	if testing.Short() {
		n = 60
	}
	var ids []string
	for i := range n {
		j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: fmt.Sprintf("%s/h%d", urls[i%len(urls)], i)}})
		ids = append(ids, j.ID)
		setState(t, b.Store, j.ID, broker.StateLoading)
		setState(t, b.Store, j.ID, broker.StateCanceled)
	}
	waitConsumerIdle(t, b)
	waitNoPending(t, b.Store)
	for _, id := range ids[:20] {
		redeliver(t, b, id)
	}
	eventually(t, 30*time.Second, "the dispatcher's tables empty", func() bool {
		for _, n := range d.tableSizes() {
			if n != 0 {
				return false
			}
		}
		return true
	})
	d.cfg.Client.CloseIdleConnections()
	var got int
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(15 * time.Second); ; <-tick.C {
		if got = runtime.NumGoroutine(); got <= base+2 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<22)
			t.Fatalf("goroutines: %d, were %d\n%s", got, base, buf[:runtime.Stack(buf, true)])
		}
	}
	t.Logf("%d jobs, %d attempts: goroutines %d -> %d; tables %v", n, hits.Load(), base, got, d.tableSizes())
}
