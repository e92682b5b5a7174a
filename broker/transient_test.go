package broker_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// What JetStream says for now (retried, then 503) against what it says of the request
// (no retry): a stream whose queue of pending writes is full (a burst of large bodies
// on a busy disk) is for now, as a leader election is; a full queue is not.
func TestTransient(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&jetstream.APIError{Code: 429, ErrorCode: 10167, Description: "too many requests"}, true},
		{fmt.Errorf("publish: %w", &jetstream.APIError{Code: 503, ErrorCode: 10008}), true},
		{context.DeadlineExceeded, true},
		{fmt.Errorf("broker: fetch x: %w", jetstream.ErrConsumerLeadershipChanged), true},
		{jetstream.ErrServerShutdown, true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10077, Description: "maximum messages exceeded"}, false},
		{&jetstream.APIError{Code: 400, ErrorCode: 10071, Description: "wrong last sequence"}, false},
		{errors.New("something else"), false},
		{nil, false},
	} {
		if got := broker.Transient(c.err); got != c.want {
			t.Errorf("Transient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
