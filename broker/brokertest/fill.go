package brokertest

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// FillStore takes every byte JetStream has left (give the server a MaxStore) with a
// stream of its own, BALLAST, and returns a func that gives the room back.
func FillStore(t *testing.T, nc *nats.Conn) (giveBack func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BALLAST", Subjects: []string{"ballast"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{256 << 10, 16 << 10, 1 << 10, 64} {
		chunk := bytes.Repeat([]byte("b"), size)
		for i := 0; ; i++ {
			if _, err := js.Publish(ctx, "ballast", chunk); err != nil {
				break
			}
			if i > 10000 {
				t.Fatal("the store never filled up")
			}
		}
	}
	return func() {
		if err := js.DeleteStream(context.Background(), "BALLAST"); err != nil {
			t.Error(err)
		}
	}
}
