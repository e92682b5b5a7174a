package worker

import (
	"strings"
	"testing"
	"time"
)

// The first answer byte's time keeps the monotonic clock's reading, as the last byte's
// does: a step of the wall clock while a job loads (NTP setting a clock at boot, a VM
// resumed) is no load time, which would move every later swap's ETA.
func TestFirstByteTimeIsMonotonic(t *testing.T) {
	t.Parallel()
	r := &runningJob{started: time.Now()}
	at := r.started.Add(1500 * time.Millisecond)
	r.answered(at)
	got := r.answeredAt()
	if !strings.Contains(got.String(), " m=") {
		t.Fatalf("first byte at %v: no monotonic reading, so durations from it follow the wall clock", got)
	}
	if d := got.Sub(r.started); d != 1500*time.Millisecond {
		t.Fatalf("first byte %v after the start, want 1.5s", d)
	}
}
