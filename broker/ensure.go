package broker

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"
)

// A foreman creates its streams and buckets at every start, and several foremen on one
// NATS each do. A create of a stream that exists with the same configuration changes
// nothing, where an update rewrites the stream's configuration while the other foremen
// create consumers on it (nats-server 2.15 reads that configuration unlocked there: a
// data race); so each is created, and updated only when its configuration differs.

// ensureStream creates the stream of cfg, or updates it to cfg when it exists otherwise.
func ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	st, err := js.CreateStream(ctx, cfg)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return js.UpdateStream(ctx, cfg)
	}
	return st, err
}

// ensureKeyValue is ensureStream for a key-value bucket.
func ensureKeyValue(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.CreateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) {
		return js.UpdateKeyValue(ctx, cfg)
	}
	return kv, err
}

// ensureObjectStore is ensureStream for an object store.
func ensureObjectStore(ctx context.Context, js jetstream.JetStream, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	os, err := js.CreateObjectStore(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) {
		return js.UpdateObjectStore(ctx, cfg)
	}
	return os, err
}
