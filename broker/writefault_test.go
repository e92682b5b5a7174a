package broker

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// A report that hangs (the server's health check reading a disk that hangs) is asked
// once: the asks meanwhile, each past faultRecheck, find it running and start no other,
// and the writes go on as with no fault.
func TestWriteFaultAsksOneReportAtATime(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	defer close(release)
	started := make(chan struct{}, 10)
	report := func() error {
		started <- struct{}{}
		<-release
		return errors.New("write error")
	}
	var f writeFault
	now := time.Now()
	for i := range 3 {
		if err := f.check(report, now.Add(time.Duration(i)*2*faultRecheck)); err != nil {
			t.Fatalf("ask %d while the report hangs: %v, want none", i, err)
		}
	}
	<-started
	if n := len(started); n != 0 {
		t.Fatalf("%d more reports started while the first one hung", n)
	}
}

// The answer of a report that came after faultAsk is kept when it comes, and an ask
// past faultRecheck asks again.
func TestWriteFaultKeepsALateAnswer(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var calls atomic.Int32
	report := func() error {
		if calls.Add(1) == 1 {
			<-release
		}
		return errors.New("write error")
	}
	var f writeFault
	now := time.Now()
	if err := f.check(report, now); err != nil {
		t.Fatalf("ask while the report hangs: %v, want none", err)
	}
	f.mu.Lock()
	answered := f.asking
	f.mu.Unlock()
	if answered == nil {
		t.Fatal("no report running after an ask that was not answered")
	}
	close(release)
	<-answered
	if err := f.standing(report, now.Add(faultRecheck/2)); !errors.Is(err, ErrStoreFailed) {
		t.Fatalf("fault after the late answer: %v, want ErrStoreFailed", err)
	}
	if err := f.check(report, now.Add(2*faultRecheck)); !errors.Is(err, ErrStoreFailed) || calls.Load() != 2 {
		t.Fatalf("ask once the report returned: %v after %d reports, want ErrStoreFailed after 2", err, calls.Load())
	}
}

// A fault reported stands through a check that gets no answer within faultAsk (the
// health check slowed by a loaded machine): it says nothing of the fault going. Before,
// such a check counted as no fault, and a large submit then put its body and waited the
// put out, seconds, for the same refusal.
func TestWriteFaultStandsThroughAnUnansweredCheck(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	defer close(release)
	var calls atomic.Int32
	report := func() error {
		if calls.Add(1) > 1 {
			<-release // the second check hangs
		}
		return errors.New("write error")
	}
	var f writeFault
	now := time.Now()
	if err := f.check(report, now); !errors.Is(err, ErrStoreFailed) {
		t.Fatalf("first check: %v, want ErrStoreFailed", err)
	}
	if err := f.standing(report, now.Add(2*faultRecheck)); !errors.Is(err, ErrStoreFailed) || calls.Load() != 2 {
		t.Fatalf("the fault while its check hangs: %v after %d checks, want ErrStoreFailed after 2", err, calls.Load())
	}
	if !f.known.Load() {
		t.Error("the fault is no longer known while its check hangs")
	}
}
