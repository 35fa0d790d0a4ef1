// Package passwd hashes and verifies passwords. New hashes are argon2id
// (memory-hard, the current recommendation) or bcrypt; either kind of
// stored hash verifies, so the setting can change without locking anybody
// out.
package passwd

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Algorithms for new hashes.
const (
	Argon2id = "argon2id"
	Bcrypt   = "bcrypt"
)

// Defaults follow OWASP's argon2id recommendation (19 MiB, two passes,
// one lane) and bcrypt's own default cost.
const (
	DefaultArgonTime      = 2
	DefaultArgonMemoryKiB = 19 << 10
	DefaultBcryptCost     = bcrypt.DefaultCost
	// MinArgonMemoryKiB is argon2's own floor for one lane.
	MinArgonMemoryKiB = 8
)

const (
	saltLen = 16
	keyLen  = 32
)

// ErrMismatch means the password does not match the hash.
var ErrMismatch = errors.New("password does not match")

// Params choose how new passwords are hashed.
type Params struct {
	Algorithm      string // Argon2id (the default) or Bcrypt
	ArgonTime      uint32 // passes over memory
	ArgonMemoryKiB uint32
	BcryptCost     int
}

func (p Params) withDefaults() Params {
	if p.Algorithm == "" {
		p.Algorithm = Argon2id
	}
	if p.ArgonTime == 0 {
		p.ArgonTime = DefaultArgonTime
	}
	if p.ArgonMemoryKiB == 0 {
		p.ArgonMemoryKiB = DefaultArgonMemoryKiB
	}
	if p.BcryptCost == 0 {
		p.BcryptCost = DefaultBcryptCost
	}
	return p
}

// Validate reports settings that cannot work.
func (p Params) Validate() error {
	p = p.withDefaults()
	switch {
	case p.Algorithm != Argon2id && p.Algorithm != Bcrypt:
		return fmt.Errorf("password hash %q: want %s or %s", p.Algorithm, Argon2id, Bcrypt)
	case p.BcryptCost < bcrypt.MinCost || p.BcryptCost > bcrypt.MaxCost:
		return fmt.Errorf("hash cost %d outside %d..%d", p.BcryptCost, bcrypt.MinCost, bcrypt.MaxCost)
	case p.ArgonTime > 100:
		return fmt.Errorf("argon2 time %d is more than 100 passes", p.ArgonTime)
	case p.ArgonMemoryKiB < MinArgonMemoryKiB || p.ArgonMemoryKiB > 4<<20:
		return fmt.Errorf("argon2 memory %d KiB outside %d KiB..4 GiB", p.ArgonMemoryKiB, MinArgonMemoryKiB)
	}
	return nil
}

// Hash returns the encoded hash of password: argon2id in the PHC string
// format ($argon2id$v=19$m=…,t=…,p=1$salt$key), or a bcrypt hash.
func (p Params) Hash(password string) (string, error) {
	p = p.withDefaults()
	if p.Algorithm == Bcrypt {
		h, err := bcrypt.GenerateFromPassword([]byte(password), p.BcryptCost)
		return string(h), err
	}
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("salt: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, p.ArgonTime, p.ArgonMemoryKiB, 1, keyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=1$%s$%s", argon2.Version, p.ArgonMemoryKiB, p.ArgonTime,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key)), nil
}

// Verify checks password against an encoded hash of either kind. It
// returns ErrMismatch for a wrong password and another error for a hash
// it cannot read.
func Verify(encoded, password string) error {
	if strings.HasPrefix(encoded, "$2") {
		err := bcrypt.CompareHashAndPassword([]byte(encoded), []byte(password))
		if errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
			return ErrMismatch
		}
		return err
	}
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[1] != Argon2id {
		return errors.New("unknown password hash format")
	}
	if v, ok := param(parts[2], "v=", 32); !ok || v != argon2.Version {
		return errors.New("unsupported argon2 version")
	}
	mem, time, lanes, ok := argonParams(parts[3])
	if !ok || mem < MinArgonMemoryKiB || mem > 4<<20 || time < 1 || time > 100 || lanes < 1 {
		return errors.New("bad argon2 parameters")
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	key, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(key) == 0 {
		return errors.New("bad argon2 salt or key")
	}
	got := argon2.IDKey([]byte(password), salt, time, mem, lanes, uint32(len(key)))
	if subtle.ConstantTimeCompare(got, key) != 1 {
		return ErrMismatch
	}
	return nil
}

// argonParams reads "m=<KiB>,t=<passes>,p=<lanes>". It is parsed by hand:
// fmt.Sscanf cost a quarter of a verification at the cheapest setting.
func argonParams(s string) (mem, time uint32, lanes uint8, ok bool) {
	m, rest, _ := strings.Cut(s, ",")
	t, p, _ := strings.Cut(rest, ",")
	mv, ok1 := param(m, "m=", 32)
	tv, ok2 := param(t, "t=", 32)
	pv, ok3 := param(p, "p=", 8)
	return uint32(mv), uint32(tv), uint8(pv), ok1 && ok2 && ok3
}

// param reads "<key><decimal>" with the number fitting in bits.
func param(s, key string, bits int) (uint64, bool) {
	num, found := strings.CutPrefix(s, key)
	if !found {
		return 0, false
	}
	v, err := strconv.ParseUint(num, 10, bits)
	return v, err == nil
}
