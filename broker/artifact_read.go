package broker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/nats-io/nats.go/jetstream"
)

// ArtifactFile is an artifact opened for reading: what the record says of it, and where
// its bytes are. Opening one reads none of its bytes.
type ArtifactFile struct {
	// Artifact is the record's metadata, but for Size: the bytes there are, from the
	// object's info (or the record's copy).
	Artifact
	// Digest is "SHA-256=" and the URL-safe base64 of the bytes' SHA-256, as the object
	// store writes it, so the same bytes have the same digest held in the record or not.
	Digest string

	held []byte // the record's copy (Artifact.Inline)
	s    *Store
	info *jetstream.ObjectInfo
}

// OpenArtifact opens an artifact of job id for reading: the record's copy of one it holds,
// else its object, of which only the info is read.
func (s *Store) OpenArtifact(ctx context.Context, id, name string) (*ArtifactFile, error) {
	j, a, err := s.artifactOf(ctx, id, name)
	if err != nil {
		return nil, err
	}
	if a.Inline {
		data, held := j.HeldArtifact(a)
		if !held {
			return nil, fmt.Errorf("%w: %s/%s", ErrArtifactNotFound, id, name)
		}
		sum := sha256.New()
		sum.Write(data)
		a.Size = int64(len(data))
		return &ArtifactFile{Artifact: a, Digest: jetstream.GetObjectDigestValue(sum), held: data}, nil
	}
	var info *jetstream.ObjectInfo
	err = s.retry(ctx, func(ctx context.Context) (err error) {
		info, err = s.artifacts.GetInfo(ctx, artifactObject(id, name))
		if errors.Is(err, jetstream.ErrObjectNotFound) && s.mayBeReplicated() {
			// A direct get, which a replica behind the one that stored the object may
			// answer: the record lists it, so the stream's leader has the last word.
			info, err = s.leaderObjectInfo(ctx, artifactObject(id, name))
		}
		return err
	})
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%w: %s/%s", ErrArtifactNotFound, id, name)
	}
	if err != nil {
		return nil, fmt.Errorf("broker: get artifact: %w", err)
	}
	a.Size = int64(info.Size)
	return &ArtifactFile{Artifact: a, Digest: info.Digest, s: s, info: info}, nil
}

// leaderObjectInfo reads object name's info from the stream's leader, as GetInfo reads it
// from any replica.
func (s *Store) leaderObjectInfo(ctx context.Context, name string) (*jetstream.ObjectInfo, error) {
	meta := "$O." + ArtifactsBucket + ".M." + base64.URLEncoding.EncodeToString([]byte(name))
	m, err := s.leaderMsg(ctx, "OBJ_"+ArtifactsBucket, msgGet{LastFor: meta})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, jetstream.ErrObjectNotFound
	}
	if err != nil {
		return nil, err
	}
	var info jetstream.ObjectInfo
	if err := json.Unmarshal(m.Data, &info); err != nil {
		return nil, fmt.Errorf("broker: artifact %s: %w", name, jetstream.ErrBadObjectMeta)
	}
	if info.Deleted {
		return nil, jetstream.ErrObjectNotFound
	}
	info.ModTime = m.Time
	return &info, nil
}

// leaderObject reads object name whole as the stream's leader has it: its info from the
// leader, its chunks one at a time as ArtifactFile.Reader reads them (from the leader
// once a replica is found behind), its digest checked at the end.
func (s *Store) leaderObject(ctx context.Context, name string) ([]byte, error) {
	var info *jetstream.ObjectInfo
	err := s.retry(ctx, func(ctx context.Context) (err error) {
		info, err = s.leaderObjectInfo(ctx, name)
		return err
	})
	if err != nil {
		return nil, err
	}
	f := &ArtifactFile{Artifact: Artifact{Size: int64(info.Size)}, Digest: info.Digest, s: s, info: info}
	return readSized(f.Reader(ctx, 0, f.Size), info.Size)
}

// Reader reads n bytes of the artifact from offset off (both within Size).
//
// An object is read one chunk at a time, as its bytes are asked for, with the stream's
// direct get of the object's next chunk: a reader holds one chunk (at most 128 KiB, see
// bodyLimits), never the object. jetstream's ObjectStore.Get would instead push the
// chunks to a subscription, which buffers as much as the server's flow control lets
// through (up to 32 MiB per reader), cannot be stopped while a read waits, and ends the
// whole read at the context's deadline (5 s when it has none). The chunks before off are
// read and dropped: the object store keeps no index of them. Each chunk's read is bounded
// by ctx and Config.RetryWindow, so a reader whose object cannot be read fails, never
// waits.
//
// A direct get may be answered by any replica of a replicated store, each chunk by
// another, and one behind the object's writer has not got its last chunks yet: a chunk
// not found there is asked of the stream's leader (as the old read through a consumer
// did for every chunk), and so are the ones after it, younger still.
//
// A reader of the whole object checks its digest when it has read the last chunk and
// before it gives any byte of it: bytes that are not the object's end the read short of
// n, with an error. A part is given unchecked, as the digest is of the whole.
func (f *ArtifactFile) Reader(ctx context.Context, off, n int64) io.Reader {
	if f.info == nil {
		return bytes.NewReader(f.held[off : off+n])
	}
	r := &chunkReader{ctx: ctx, s: f.s, info: f.info, skip: off, left: n, next: 1,
		subj: fmt.Sprintf("$O.%s.C.%s", ArtifactsBucket, f.info.NUID)}
	if off == 0 && n == f.Size {
		r.sum = sha256.New()
	}
	return r
}

// chunkReader reads an object's chunks as they are asked for (ArtifactFile.Reader).
type chunkReader struct {
	ctx    context.Context
	s      *Store
	info   *jetstream.ObjectInfo
	subj   string // the object's chunks
	stream jetstream.Stream
	leader bool      // a replica was found behind: the chunks left are read from the leader
	next   uint64    // the stream sequence the next chunk is looked for from
	got    int64     // the object's bytes read so far
	skip   int64     // bytes still to drop before the first one given
	left   int64     // bytes still to give
	chunk  []byte    // what is left to give of the chunk at hand
	sum    hash.Hash // a whole read's digest, else nil
	err    error
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.chunk) == 0 || r.left == 0 {
		if r.left == 0 {
			return 0, io.EOF
		}
		if r.err != nil {
			return 0, r.err
		}
		r.err = r.fetch()
	}
	n := copy(p, r.chunk[:min(int64(len(r.chunk)), r.left)])
	r.chunk, r.left = r.chunk[n:], r.left-int64(n)
	return n, nil
}

// fetch reads the next chunk into r.chunk, less what is to be skipped.
func (r *chunkReader) fetch() error {
	name := r.info.Name
	if r.got >= int64(r.info.Size) {
		return fmt.Errorf("broker: read artifact %s: read past its end", name)
	}
	if r.stream == nil {
		err := r.s.retry(r.ctx, func(ctx context.Context) (err error) {
			r.stream, err = r.s.js.Stream(ctx, "OBJ_"+ArtifactsBucket)
			return err
		})
		if err != nil {
			return fmt.Errorf("broker: read artifact %s: %w", name, err)
		}
	}
	var seq uint64
	var data []byte
	err := r.s.retry(r.ctx, func(ctx context.Context) (err error) {
		seq, data, err = r.get(ctx)
		return err
	})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("broker: read artifact %s: its chunks end at byte %d of %d: %w", name, r.got, r.info.Size, err)
	}
	if err != nil {
		return fmt.Errorf("broker: read artifact %s: %w", name, err)
	}
	r.next = seq + 1
	if int64(len(data)) > int64(r.info.Size)-r.got {
		return fmt.Errorf("broker: read artifact %s: its chunks run past its %d bytes", name, r.info.Size)
	}
	r.got += int64(len(data))
	if r.sum != nil {
		r.sum.Write(data)
		if r.got == int64(r.info.Size) && jetstream.GetObjectDigestValue(r.sum) != r.info.Digest {
			return fmt.Errorf("broker: read artifact %s: %w", name, jetstream.ErrDigestMismatch)
		}
	}
	drop := min(r.skip, int64(len(data)))
	r.chunk, r.skip = data[drop:], r.skip-drop
	return nil
}

// get reads the object's first chunk from sequence r.next on, with a direct get until a
// replica is found behind, then from the stream's leader.
func (r *chunkReader) get(ctx context.Context) (seq uint64, data []byte, err error) {
	if !r.leader {
		m, err := r.stream.GetMsg(ctx, r.next, jetstream.WithGetMsgSubject(r.subj))
		if err == nil {
			return m.Sequence, m.Data, nil
		}
		if !errors.Is(err, jetstream.ErrMsgNotFound) || !r.s.mayBeReplicated() {
			return 0, nil, err
		}
		r.leader = true
	}
	m, err := r.s.leaderMsg(ctx, "OBJ_"+ArtifactsBucket, msgGet{Seq: r.next, NextFor: r.subj})
	if err != nil {
		return 0, nil, err
	}
	return m.Seq, m.Data, nil
}
