package broker

import (
	"context"
	"errors"
	"fmt"

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
	obs, err := js.CreateObjectStore(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) {
		return js.UpdateObjectStore(ctx, cfg)
	}
	return obs, err
}

// raisedTTLBucket opens the key-value bucket of cfg, whose TTL is only ever raised: each
// foreman on a NATS asks for its own, and one asking for less must not cut the others'
// entries short (each entry, or its reader, says how long it counts). A bucket whose
// TTL is cfg's or longer is used as it is.
func raisedTTLBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if kv, err := js.KeyValue(ctx, cfg.Bucket); err == nil {
		st, err := kv.Status(ctx)
		if err == nil && st.TTL() >= cfg.TTL {
			return kv, nil
		}
	}
	kv, err := ensureKeyValue(ctx, js, cfg)
	if err != nil {
		return nil, fmt.Errorf("broker: bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}
