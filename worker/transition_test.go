package worker

import (
	"errors"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// TestTransitionGuards pins which records each of the worker's writes refuses, and with
// which error: the callers tell a job that ended from one being canceled by it.
func TestTransitionGuards(t *testing.T) {
	t.Parallel()
	queued := &broker.Job{State: broker.StateQueued}
	loading := &broker.Job{State: broker.StateLoading}
	cancelAsked := &broker.Job{State: broker.StateWorking, CancelRequested: "user"}
	done := &broker.Job{State: broker.StateDone, CancelRequested: "user"}
	tests := []struct {
		name  string
		guard from
		job   *broker.Job
		want  error
	}{
		{"live/queued", fromLive, queued, nil},
		{"live/cancel requested", fromLive, cancelAsked, errCancelRequested},
		{"live/ended", fromLive, done, errEnded},
		{"unended/cancel requested", fromUnended, cancelAsked, nil},
		{"unended/ended", fromUnended, done, errEnded},
		{"loading/loading", fromLoading, loading, nil},
		{"loading/queued", fromLoading, queued, errEnded},
		{"loading/ended", fromLoading, done, errEnded},
	}
	for _, tt := range tests {
		if got := tt.guard(tt.job); !errors.Is(got, tt.want) || (got == nil) != (tt.want == nil) {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}
