package broker

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// LagRecordReads makes the store's direct reads of job records answer e for its key, as a
// replica that has not got the writes since e answers.
func (s *Store) LagRecordReads(e jetstream.KeyValueEntry) { s.kv = staleKV{s.kv, e} }

type staleKV struct {
	jetstream.KeyValue
	e jetstream.KeyValueEntry
}

func (kv staleKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if key == kv.e.Key() {
		return kv.e, nil
	}
	return kv.KeyValue.Get(ctx, key)
}

// LagArtifactInfo makes the store's direct reads of artifact infos find nothing, as a
// replica that has not got an object stored a moment ago answers.
func (s *Store) LagArtifactInfo() { s.artifacts = laggingObjects{s.artifacts} }

type laggingObjects struct{ jetstream.ObjectStore }

func (laggingObjects) GetInfo(context.Context, string, ...jetstream.GetObjectInfoOpt) (*jetstream.ObjectInfo, error) {
	return nil, jetstream.ErrObjectNotFound
}
