package passwd

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func TestHashAndVerify(t *testing.T) {
	legacy, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	tests := []struct {
		name   string
		params Params
		prefix string
	}{
		{"argon2id cheap", Params{ArgonTime: 1, ArgonMemoryKiB: 8}, "$argon2id$v=19$m=8,t=1,p=1$"},
		{"argon2id default", Params{}, "$argon2id$v=19$m=19456,t=2,p=1$"},
		{"bcrypt", Params{Algorithm: Bcrypt, BcryptCost: 4}, "$2a$04$"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := tc.params.Hash("s3cret")
			if err != nil || !strings.HasPrefix(h, tc.prefix) {
				t.Fatalf("Hash = %q, %v; want prefix %q", h, err, tc.prefix)
			}
			if strings.Contains(h, "s3cret") {
				t.Fatal("the hash contains the password")
			}
			if err := Verify(h, "s3cret"); err != nil {
				t.Fatalf("right password: %v", err)
			}
			if err := Verify(h, "s3cret!"); !errors.Is(err, ErrMismatch) {
				t.Fatalf("wrong password: %v", err)
			}
			if h2, _ := tc.params.Hash("s3cret"); h2 == h {
				t.Fatal("two hashes of one password are equal: no salt?")
			}
		})
	}
	if err := Verify(string(legacy), "s3cret"); err != nil {
		t.Fatalf("a stored bcrypt hash no longer verifies: %v", err)
	}
	for _, bad := range []string{"", "plain", "$argon2id$v=19$m=8,t=1,p=1$!!$!!", "$argon2id$v=18$m=8,t=1,p=1$AA$AA",
		"$argon2id$v=19$m=999999999,t=1,p=1$AA$AA", "$argon2i$v=19$m=8,t=1,p=1$AA$AA",
		"$argon2id$v=19$m=8,t=1$AA$AA", "$argon2id$v=19$m=8,t=1,p=0$AA$AA", "$argon2id$v=19$m=8,t=1,p=256$AA$AA",
		"$argon2id$v=19$m=8,t=0,p=1$AA$AA", "$argon2id$v=19$t=1,m=8,p=1$AA$AA", "$argon2id$v=19$m=-8,t=1,p=1$AA$AA",
		"$argon2id$v=19x$m=8,t=1,p=1$AA$AA", "$argon2id$19$m=8,t=1,p=1$AA$AA"} {
		if err := Verify(bad, "x"); err == nil || errors.Is(err, ErrMismatch) {
			t.Errorf("Verify(%q) = %v, want a format error", bad, err)
		}
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		p  Params
		ok bool
	}{
		{Params{}, true},
		{Params{Algorithm: "md5"}, false},
		{Params{BcryptCost: 3}, false},
		{Params{BcryptCost: 32}, false},
		{Params{ArgonMemoryKiB: 7}, false},
		{Params{ArgonTime: 101}, false},
		{Params{Algorithm: Bcrypt, BcryptCost: 4}, true},
	}
	for _, tc := range tests {
		if err := tc.p.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tc.p, err, tc.ok)
		}
	}
}

// The cost of one hash at the settings chatd offers, for choosing them.
func BenchmarkHash(b *testing.B) {
	for _, p := range []struct {
		name string
		p    Params
	}{
		{"argon2id-t1-m8KiB", Params{ArgonTime: 1, ArgonMemoryKiB: 8}},
		{"argon2id-default", Params{}},
		{"bcrypt-4", Params{Algorithm: Bcrypt, BcryptCost: 4}},
		{"bcrypt-10", Params{Algorithm: Bcrypt, BcryptCost: 10}},
	} {
		h, _ := p.p.Hash("pw")
		b.Run(p.name, func(b *testing.B) {
			for b.Loop() {
				_ = Verify(h, "pw")
			}
		})
	}
}

// The rate the hash alone reaches on all cores: what a login storm at the
// same settings is compared with (logins/s ÷ hashes/s).
func BenchmarkVerifyParallel(b *testing.B) {
	for _, p := range []struct {
		name string
		p    Params
	}{
		{"argon2id-t1-m8KiB", Params{ArgonTime: 1, ArgonMemoryKiB: 8}},
		{"argon2id-default", Params{}},
	} {
		h, _ := p.p.Hash("pw")
		b.Run(p.name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_ = Verify(h, "pw")
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "hashes/s")
		})
	}
}
