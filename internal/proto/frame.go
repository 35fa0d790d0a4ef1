// Package proto holds the pieces of the client protocol that both the edge
// and the workers need: frame decoding, name rules, subject tokens and the
// header names used between processes.
package proto

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// DefaultMaxFrame is the largest client object accepted unless configured.
const DefaultMaxFrame = 64 << 10

var (
	// ErrTooLarge means one object exceeded the frame limit. The stream
	// cannot be resynchronised afterwards.
	ErrTooLarge = errors.New("frame too large")
	// ErrSyntax means the byte stream is not a sequence of JSON values.
	ErrSyntax = errors.New("invalid json")
)

// Decoder splits a byte stream into JSON values. Clients send objects
// separated by any whitespace (or none), pretty-printed over many lines,
// several per segment or one split over many, sometimes followed by ';'.
// The decoder only finds value boundaries; validating the value itself is
// left to encoding/json so that there is one definition of valid JSON.
type Decoder struct {
	r   *bufio.Reader
	max int
	buf []byte
}

// NewDecoder returns a decoder reading from r that refuses values longer than max bytes.
func NewDecoder(r io.Reader, max int) *Decoder {
	if max <= 0 {
		max = DefaultMaxFrame
	}
	// A small read buffer: most frames are a few hundred bytes, and an
	// idle connection keeps its buffer.
	return &Decoder{r: bufio.NewReaderSize(r, 1024), max: max}
}

// Next returns the next complete value. The returned slice is only valid
// until the following call. At a clean end of stream it returns io.EOF; a
// stream that ends inside a value returns io.ErrUnexpectedEOF.
func (d *Decoder) Next() ([]byte, error) {
	if cap(d.buf) > 8<<10 {
		d.buf = nil // one large frame should not stay with the connection
	}
	d.buf = d.buf[:0]
	// Skip separators between values.
	var c byte
	for {
		b, err := d.r.ReadByte()
		if err != nil {
			return nil, err
		}
		if isSpace(b) || b == ';' {
			continue
		}
		c = b
		break
	}
	switch c {
	case '{', '[':
		return d.composite(c)
	case '"':
		d.buf = append(d.buf, c)
		if err := d.str(); err != nil {
			return nil, err
		}
		return d.buf, nil
	case '}', ']', ',', ':':
		return nil, fmt.Errorf("%w: unexpected %q", ErrSyntax, c)
	default:
		return d.scalar(c)
	}
}

// composite reads an object or array, tracking nesting and strings only.
func (d *Decoder) composite(open byte) ([]byte, error) {
	d.buf = append(d.buf, open)
	depth := 1
	for depth > 0 {
		b, err := d.readByte()
		if err != nil {
			return nil, err
		}
		d.buf = append(d.buf, b)
		switch b {
		case '{', '[':
			depth++
		case '}', ']':
			depth--
		case '"':
			if err := d.str(); err != nil {
				return nil, err
			}
		}
		if len(d.buf) > d.max {
			return nil, ErrTooLarge
		}
	}
	return d.buf, nil
}

// str consumes a string body up to and including its closing quote; the
// opening quote is already in d.buf.
func (d *Decoder) str() error {
	escaped := false
	for {
		b, err := d.readByte()
		if err != nil {
			return err
		}
		d.buf = append(d.buf, b)
		if len(d.buf) > d.max {
			return ErrTooLarge
		}
		switch {
		case escaped:
			escaped = false
		case b == '\\':
			escaped = true
		case b == '"':
			return nil
		}
	}
}

// scalar reads a bare number or literal up to the next delimiter. A scalar
// at the very end of the stream is complete; there is nothing to wait for.
func (d *Decoder) scalar(first byte) ([]byte, error) {
	d.buf = append(d.buf, first)
	for {
		b, err := d.r.ReadByte()
		if err == io.EOF {
			return d.buf, nil
		}
		if err != nil {
			return nil, err
		}
		if isSpace(b) || b == ';' || b == '{' || b == '[' || b == '"' || b == '}' || b == ']' {
			_ = d.r.UnreadByte()
			return d.buf, nil
		}
		d.buf = append(d.buf, b)
		if len(d.buf) > d.max {
			return nil, ErrTooLarge
		}
	}
}

// Between reports whether the decoder is between values: nothing of the
// next value has been read yet. A reader it reads from may use it, during
// a read, to tell an idle stream from one stalled inside a value.
func (d *Decoder) Between() bool { return len(d.buf) == 0 }

func (d *Decoder) readByte() (byte, error) {
	b, err := d.r.ReadByte()
	if err == io.EOF {
		return 0, io.ErrUnexpectedEOF
	}
	return b, err
}

func isSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\r'
}
