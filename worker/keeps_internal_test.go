package worker

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// keeps does not hold the keepers' map while it waits for a keeper whose tick is being
// sent (its mu held, as a stalled connection holds it up to its write timeout): other
// deliveries' keepers start and let go meanwhile.
func TestKeepsDoesNotHoldTheKeepersWhileATickIsSent(t *testing.T) {
	t.Parallel()
	w := &Worker{keepers: map[*broker.Lease]*keeper{}}
	k := &keeper{}
	w.keepers[&broker.Lease{JobID: "job-1"}] = k
	k.mu.Lock() // a tick being sent
	answer := make(chan bool, 1)
	go func() { answer <- w.keeps("job-1") }()
	// Wait until keeps waits for the keeper's mu (its goroutine blocked in a lock).
	deadline := time.Now().Add(30 * time.Second)
	for !blockedIn("(*Worker).keeps", "sync.(*Mutex).Lock") {
		if time.Now().After(deadline) {
			k.mu.Unlock()
			t.Fatal("keeps never waited for the keeper")
		}
		runtime.Gosched()
	}
	got := make(chan struct{})
	go func() {
		w.keepMu.Lock()
		w.keepers[&broker.Lease{JobID: "job-2"}] = &keeper{} // another delivery's keeper starts
		w.keepMu.Unlock()
		close(got)
	}()
	select {
	case <-got:
	case <-time.After(10 * time.Second): // a fault's bound: the map stays held while the tick is sent
		k.mu.Unlock()
		t.Fatal("another delivery's keeper could not start while keeps waited for a tick being sent")
	}
	k.mu.Unlock()
	if !<-answer {
		t.Error("keeps: a delivery kept unsettled was not counted")
	}
}

// blockedIn reports whether a goroutine's stack holds both fn and lock, which it is
// blocked in ("sync.Mutex.lockSlow" sits under the lock's frame).
func blockedIn(fn, lock string) bool {
	buf := make([]byte, 1<<20)
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, fn) && strings.Contains(g, lock) && strings.Contains(g, "[sync.Mutex.Lock") {
			return true
		}
	}
	return false
}
