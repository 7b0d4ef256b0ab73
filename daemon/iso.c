/*
 * iso: country and language code checks on the ingest hot path.
 *
 * Both tables are 26x26 bitmaps: row i holds the codes whose first letter is the i-th letter
 * of the alphabet, bit j is set when the second letter is the j-th. A lookup is two index
 * computations and a bit test, with no locale, no allocation and no shared state.
 *
 * The country table holds the 249 officially assigned ISO 3166-1 alpha-2 codes (as in
 * Debian's iso-codes 4.15, /usr/share/iso-codes/json/iso_3166-1.json). It deliberately
 * leaves out the user-assigned codes (AA, QM-QZ, XA-XZ, ZZ), so XK, which many
 * organisations use for Kosovo, is refused: it is user-assigned, not an ISO code. The
 * exceptionally reserved codes (EU, UK, UN, ...) are not assigned either and are refused.
 *
 * The language table holds the 184 ISO 639-1 codes of the same iso-codes release
 * (iso_639-2.json, alpha_2). That includes "bh" (Bihari languages), a collective code that
 * newer ISO 639-1 lists have withdrawn; a council using it gets it counted rather than
 * refused. Codes withdrawn long ago ("iw", "in", "ji", "jw", "mo", "sh") are refused.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "iso.h"

/* Bits for the second letter of a code, upper case for countries, lower case for languages. */
#define UP(c) (UINT32_C(1) << ((c) - 'A'))
#define LO(c) (UINT32_C(1) << ((c) - 'a'))

static const uint32_t country_codes[26] = {
        /* AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ */
        UP('D') | UP('E') | UP('F') | UP('G') | UP('I') | UP('L') | UP('M') | UP('O') | UP('Q') |
                UP('R') | UP('S') | UP('T') | UP('U') | UP('W') | UP('X') | UP('Z'),
        /* BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ */
        UP('A') | UP('B') | UP('D') | UP('E') | UP('F') | UP('G') | UP('H') | UP('I') | UP('J') |
                UP('L') | UP('M') | UP('N') | UP('O') | UP('Q') | UP('R') | UP('S') | UP('T') |
                UP('V') | UP('W') | UP('Y') | UP('Z'),
        /* CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ */
        UP('A') | UP('C') | UP('D') | UP('F') | UP('G') | UP('H') | UP('I') | UP('K') | UP('L') |
                UP('M') | UP('N') | UP('O') | UP('R') | UP('U') | UP('V') | UP('W') | UP('X') |
                UP('Y') | UP('Z'),
        /* DE DJ DK DM DO DZ */
        UP('E') | UP('J') | UP('K') | UP('M') | UP('O') | UP('Z'),
        /* EC EE EG EH ER ES ET */
        UP('C') | UP('E') | UP('G') | UP('H') | UP('R') | UP('S') | UP('T'),
        /* FI FJ FK FM FO FR */
        UP('I') | UP('J') | UP('K') | UP('M') | UP('O') | UP('R'),
        /* GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY */
        UP('A') | UP('B') | UP('D') | UP('E') | UP('F') | UP('G') | UP('H') | UP('I') | UP('L') |
                UP('M') | UP('N') | UP('P') | UP('Q') | UP('R') | UP('S') | UP('T') | UP('U') |
                UP('W') | UP('Y'),
        /* HK HM HN HR HT HU */
        UP('K') | UP('M') | UP('N') | UP('R') | UP('T') | UP('U'),
        /* ID IE IL IM IN IO IQ IR IS IT */
        UP('D') | UP('E') | UP('L') | UP('M') | UP('N') | UP('O') | UP('Q') | UP('R') | UP('S') |
                UP('T'),
        /* JE JM JO JP */
        UP('E') | UP('M') | UP('O') | UP('P'),
        /* KE KG KH KI KM KN KP KR KW KY KZ */
        UP('E') | UP('G') | UP('H') | UP('I') | UP('M') | UP('N') | UP('P') | UP('R') | UP('W') |
                UP('Y') | UP('Z'),
        /* LA LB LC LI LK LR LS LT LU LV LY */
        UP('A') | UP('B') | UP('C') | UP('I') | UP('K') | UP('R') | UP('S') | UP('T') | UP('U') |
                UP('V') | UP('Y'),
        /* MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ */
        UP('A') | UP('C') | UP('D') | UP('E') | UP('F') | UP('G') | UP('H') | UP('K') | UP('L') |
                UP('M') | UP('N') | UP('O') | UP('P') | UP('Q') | UP('R') | UP('S') | UP('T') |
                UP('U') | UP('V') | UP('W') | UP('X') | UP('Y') | UP('Z'),
        /* NA NC NE NF NG NI NL NO NP NR NU NZ */
        UP('A') | UP('C') | UP('E') | UP('F') | UP('G') | UP('I') | UP('L') | UP('O') | UP('P') |
                UP('R') | UP('U') | UP('Z'),
        /* OM */
        UP('M'),
        /* PA PE PF PG PH PK PL PM PN PR PS PT PW PY */
        UP('A') | UP('E') | UP('F') | UP('G') | UP('H') | UP('K') | UP('L') | UP('M') | UP('N') |
                UP('R') | UP('S') | UP('T') | UP('W') | UP('Y'),
        /* QA */
        UP('A'),
        /* RE RO RS RU RW */
        UP('E') | UP('O') | UP('S') | UP('U') | UP('W'),
        /* SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ */
        UP('A') | UP('B') | UP('C') | UP('D') | UP('E') | UP('G') | UP('H') | UP('I') | UP('J') |
                UP('K') | UP('L') | UP('M') | UP('N') | UP('O') | UP('R') | UP('S') | UP('T') |
                UP('V') | UP('X') | UP('Y') | UP('Z'),
        /* TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ */
        UP('C') | UP('D') | UP('F') | UP('G') | UP('H') | UP('J') | UP('K') | UP('L') | UP('M') |
                UP('N') | UP('O') | UP('R') | UP('T') | UP('V') | UP('W') | UP('Z'),
        /* UA UG UM US UY UZ */
        UP('A') | UP('G') | UP('M') | UP('S') | UP('Y') | UP('Z'),
        /* VA VC VE VG VI VN VU */
        UP('A') | UP('C') | UP('E') | UP('G') | UP('I') | UP('N') | UP('U'),
        /* WF WS */
        UP('F') | UP('S'),
        /* X: none */
        0,
        /* YE YT */
        UP('E') | UP('T'),
        /* ZA ZM ZW */
        UP('A') | UP('M') | UP('W'),
};

static const uint32_t language_codes[26] = {
        /* aa ab ae af ak am an ar as av ay az */
        LO('a') | LO('b') | LO('e') | LO('f') | LO('k') | LO('m') | LO('n') | LO('r') | LO('s') |
                LO('v') | LO('y') | LO('z'),
        /* ba be bg bh bi bm bn bo br bs */
        LO('a') | LO('e') | LO('g') | LO('h') | LO('i') | LO('m') | LO('n') | LO('o') | LO('r') |
                LO('s'),
        /* ca ce ch co cr cs cu cv cy */
        LO('a') | LO('e') | LO('h') | LO('o') | LO('r') | LO('s') | LO('u') | LO('v') | LO('y'),
        /* da de dv dz */
        LO('a') | LO('e') | LO('v') | LO('z'),
        /* ee el en eo es et eu */
        LO('e') | LO('l') | LO('n') | LO('o') | LO('s') | LO('t') | LO('u'),
        /* fa ff fi fj fo fr fy */
        LO('a') | LO('f') | LO('i') | LO('j') | LO('o') | LO('r') | LO('y'),
        /* ga gd gl gn gu gv */
        LO('a') | LO('d') | LO('l') | LO('n') | LO('u') | LO('v'),
        /* ha he hi ho hr ht hu hy hz */
        LO('a') | LO('e') | LO('i') | LO('o') | LO('r') | LO('t') | LO('u') | LO('y') | LO('z'),
        /* ia id ie ig ii ik io is it iu */
        LO('a') | LO('d') | LO('e') | LO('g') | LO('i') | LO('k') | LO('o') | LO('s') | LO('t') |
                LO('u'),
        /* ja jv */
        LO('a') | LO('v'),
        /* ka kg ki kj kk kl km kn ko kr ks ku kv kw ky */
        LO('a') | LO('g') | LO('i') | LO('j') | LO('k') | LO('l') | LO('m') | LO('n') | LO('o') |
                LO('r') | LO('s') | LO('u') | LO('v') | LO('w') | LO('y'),
        /* la lb lg li ln lo lt lu lv */
        LO('a') | LO('b') | LO('g') | LO('i') | LO('n') | LO('o') | LO('t') | LO('u') | LO('v'),
        /* mg mh mi mk ml mn mr ms mt my */
        LO('g') | LO('h') | LO('i') | LO('k') | LO('l') | LO('n') | LO('r') | LO('s') | LO('t') |
                LO('y'),
        /* na nb nd ne ng nl nn no nr nv ny */
        LO('a') | LO('b') | LO('d') | LO('e') | LO('g') | LO('l') | LO('n') | LO('o') | LO('r') |
                LO('v') | LO('y'),
        /* oc oj om or os */
        LO('c') | LO('j') | LO('m') | LO('r') | LO('s'),
        /* pa pi pl ps pt */
        LO('a') | LO('i') | LO('l') | LO('s') | LO('t'),
        /* qu */
        LO('u'),
        /* rm rn ro ru rw */
        LO('m') | LO('n') | LO('o') | LO('u') | LO('w'),
        /* sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw */
        LO('a') | LO('c') | LO('d') | LO('e') | LO('g') | LO('i') | LO('k') | LO('l') | LO('m') |
                LO('n') | LO('o') | LO('q') | LO('r') | LO('s') | LO('t') | LO('u') | LO('v') |
                LO('w'),
        /* ta te tg th ti tk tl tn to tr ts tt tw ty */
        LO('a') | LO('e') | LO('g') | LO('h') | LO('i') | LO('k') | LO('l') | LO('n') | LO('o') |
                LO('r') | LO('s') | LO('t') | LO('w') | LO('y'),
        /* ug uk ur uz */
        LO('g') | LO('k') | LO('r') | LO('z'),
        /* ve vi vo */
        LO('e') | LO('i') | LO('o'),
        /* wa wo */
        LO('a') | LO('o'),
        /* xh */
        LO('h'),
        /* yi yo */
        LO('i') | LO('o'),
        /* za zh zu */
        LO('a') | LO('h') | LO('u'),
};

/* Longest tag accepted, in bytes (RFC 5646 section 4.4.1 asks every system to handle 35). */
#define TAG_MAX 35
/* Longest subtag after the primary one (RFC 5646 section 2.1). */
#define SUBTAG_MAX 8

/* Locale-free ASCII classes: a tag is ASCII by definition, whatever LC_CTYPE says. */
static bool
is_upper(char c)
{
	return c >= 'A' && c <= 'Z';
}

static bool
is_lower(char c)
{
	return c >= 'a' && c <= 'z';
}

static bool
is_alpha(char c)
{
	return is_upper(c) || is_lower(c);
}

static bool
is_alnum(char c)
{
	return is_alpha(c) || (c >= '0' && c <= '9');
}

bool
iso_country_valid(const char *cc)
{
	/* Short-circuiting keeps every read within the string: cc[1] is read only when cc[0]
	 * is a letter (so not the terminator), and likewise cc[2]. */
	if (cc == NULL || !is_upper(cc[0]) || !is_upper(cc[1]) || cc[2] != '\0') {
		return false;
	}
	return (country_codes[cc[0] - 'A'] & UP(cc[1])) != 0;
}

int
iso_language_primary(const char *tag, char ret_primary[4])
{
	char primary[4] = "";
	size_t pos = 0;

	if (tag == NULL) {
		return -EINVAL;
	}

	/* The primary subtag: two or three letters, folded to lower case. */
	while (is_alpha(tag[pos])) {
		if (pos == 3) {
			return -EINVAL;
		}
		primary[pos] = is_upper(tag[pos]) ? (char) (tag[pos] - 'A' + 'a') : tag[pos];
		pos++;
	}
	if (pos < 2) {
		return -EINVAL;
	}
	if (pos == 2 && (language_codes[primary[0] - 'a'] & LO(primary[1])) == 0) {
		return -EINVAL;
	}

	/* Then any number of "-subtag", each 1-8 alphanumerics. The length check inside the
	 * loop stops the scan of an over-long tag after at most one more subtag. */
	while (tag[pos] != '\0') {
		size_t len = 0;

		if (tag[pos] != '-') {
			return -EINVAL;
		}
		pos++;
		while (is_alnum(tag[pos])) {
			pos++;
			len++;
			if (len > SUBTAG_MAX) {
				return -EINVAL;
			}
		}
		if (len == 0 || pos > TAG_MAX) {
			return -EINVAL;
		}
	}

	if (ret_primary != NULL) {
		memcpy(ret_primary, primary, sizeof(primary));
	}
	return 0;
}
