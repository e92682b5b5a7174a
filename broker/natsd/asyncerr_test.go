package natsd_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// asyncErrors hands over the error of each warning logged with one.
type asyncErrors chan error

func (a asyncErrors) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (a asyncErrors) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(at slog.Attr) bool {
		if err, ok := at.Value.Any().(error); ok && at.Key == "err" {
			select {
			case a <- err:
			default:
			}
		}
		return true
	})
	return nil
}
func (a asyncErrors) WithAttrs([]slog.Attr) slog.Handler { return a }
func (a asyncErrors) WithGroup(string) slog.Handler      { return a }

// A subscription of an in-process connection that falls behind and loses messages (a
// slow reader of a streamed answer) is told in the server's log, as a warning. Before,
// nats.go's own handler printed it to stderr as a bare line among foreman's log.
func TestInProcessSlowConsumerIsLogged(t *testing.T) {
	t.Parallel()
	logged := make(asyncErrors, 16)
	srv, err := natsd.Start(natsd.Config{DataDir: t.TempDir(), Logger: slog.New(logged)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	held := make(chan struct{})
	defer close(held)
	sub, err := nc.Subscribe("slow", func(*nats.Msg) { <-held }) // takes the first, then nothing
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(1, -1); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if err := nc.Publish("slow", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-logged:
		if !errors.Is(err, nats.ErrSlowConsumer) {
			t.Fatalf("logged %v, want the slow consumer", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the slow consumer was not logged")
	}
}
