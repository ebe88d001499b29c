"""Regenerate the sample decks in this folder: `python conf/decks/generate.py`.

Deterministic: one table of real E.164 prefixes with a base termination cost, and one
price policy per plan (markup or payout share, increments, fees, validity windows). The CSVs
are committed; this script is how they were made and how to remake them consistently.

Customer plans charge a markup over the base cost; VMGateClient plans pay out below it;
reseller plans pay a small share. So margin = charge − client − reseller is positive for
almost every prefix, except two deliberate negative-margin destinations (Cuba mobile and
Thuraya satellite) where client-premium pays more than wholesale-c charges.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = (
    "code,description,valid_since,valid_until,rate_per_min,connection_fee,"
    "connection_sec,billing_block_sec"
)
BASE_SINCE = "2026-01-01T00:00:00Z"
RISE_SINCE = "2027-01-01T00:00:00Z"
PROMO = ("2026-11-01T00:00:00Z", "2027-01-01T00:00:00Z")

# code|description|base cost per minute (USD)
PREFIXES = """
1|USA/Canada|0.0040
1201|USA New Jersey|0.0040
1202|USA Washington DC|0.0038
1212|USA New York|0.0036
1213|USA Los Angeles|0.0036
1305|USA Miami|0.0039
1312|USA Chicago|0.0037
1415|USA San Francisco|0.0036
1416|Canada Toronto|0.0042
1514|Canada Montreal|0.0042
1604|Canada Vancouver|0.0042
1646|USA New York|0.0036
1702|USA Las Vegas|0.0039
1713|USA Houston|0.0037
1718|USA New York|0.0036
1808|USA Hawaii|0.0120
1907|USA Alaska|0.0180
1242|Bahamas|0.1050
1246|Barbados|0.1300
1264|Anguilla|0.1900
1268|Antigua and Barbuda|0.1800
1284|British Virgin Islands|0.1600
1345|Cayman Islands|0.1200
1441|Bermuda|0.0900
1473|Grenada|0.1900
1649|Turks and Caicos|0.1700
1758|Saint Lucia|0.1900
1767|Dominica|0.2100
1787|Puerto Rico|0.0080
1809|Dominican Republic|0.0400
1829|Dominican Republic Mobile|0.0700
1876|Jamaica|0.1700
1868|Trinidad and Tobago|0.0700
7|Russia|0.0900
7495|Russia Moscow|0.0160
7499|Russia Moscow|0.0160
7812|Russia Saint Petersburg|0.0180
79|Russia Mobile|0.1200
7700|Kazakhstan|0.0850
7701|Kazakhstan Mobile|0.1100
7705|Kazakhstan Mobile|0.1100
7707|Kazakhstan Mobile|0.1100
7727|Kazakhstan Almaty|0.0600
20|Egypt|0.0800
2010|Egypt Mobile|0.1000
2011|Egypt Mobile|0.1000
2012|Egypt Mobile|0.1000
202|Egypt Cairo|0.0650
27|South Africa|0.0300
2711|South Africa Johannesburg|0.0160
2721|South Africa Cape Town|0.0160
2782|South Africa Mobile|0.0600
2783|South Africa Mobile|0.0600
2784|South Africa Mobile|0.0600
30|Greece|0.0120
30210|Greece Athens|0.0060
3069|Greece Mobile|0.0200
31|Netherlands|0.0080
3120|Netherlands Amsterdam|0.0055
316|Netherlands Mobile|0.0350
32|Belgium|0.0090
322|Belgium Brussels|0.0060
324|Belgium Mobile|0.0350
33|France|0.0070
331|France Paris|0.0045
336|France Mobile|0.0180
337|France Mobile|0.0180
34|Spain|0.0070
3491|Spain Madrid|0.0040
3493|Spain Barcelona|0.0040
346|Spain Mobile|0.0150
347|Spain Mobile|0.0150
36|Hungary|0.0110
361|Hungary Budapest|0.0080
3620|Hungary Mobile|0.0350
3630|Hungary Mobile|0.0350
39|Italy|0.0080
3902|Italy Milan|0.0050
3906|Italy Rome|0.0050
393|Italy Mobile|0.0180
40|Romania|0.0100
4021|Romania Bucharest|0.0060
407|Romania Mobile|0.0250
41|Switzerland|0.0120
4122|Switzerland Geneva|0.0080
4144|Switzerland Zurich|0.0080
417|Switzerland Mobile|0.0550
43|Austria|0.0110
431|Austria Vienna|0.0060
436|Austria Mobile|0.0400
44|United Kingdom|0.0080
4420|United Kingdom London|0.0050
44207|United Kingdom London Inner|0.0045
44208|United Kingdom London Outer|0.0048
44121|United Kingdom Birmingham|0.0052
44131|United Kingdom Edinburgh|0.0052
44141|United Kingdom Glasgow|0.0052
44161|United Kingdom Manchester|0.0052
447|United Kingdom Mobile|0.0180
4474|United Kingdom Mobile|0.0180
4475|United Kingdom Mobile|0.0185
4477|United Kingdom Mobile|0.0180
4478|United Kingdom Mobile|0.0180
4479|United Kingdom Mobile|0.0185
4470|United Kingdom Personal Numbering|0.2500
4476|United Kingdom Pager|0.2200
4484|United Kingdom Special Services|0.0900
4487|United Kingdom Special Services|0.1100
45|Denmark|0.0090
453|Denmark Copenhagen|0.0060
452|Denmark Mobile|0.0220
46|Sweden|0.0080
468|Sweden Stockholm|0.0050
467|Sweden Mobile|0.0200
47|Norway|0.0090
4722|Norway Oslo|0.0060
474|Norway Mobile|0.0250
479|Norway Mobile|0.0250
48|Poland|0.0080
4822|Poland Warsaw|0.0050
485|Poland Mobile|0.0150
486|Poland Mobile|0.0150
487|Poland Mobile|0.0150
49|Germany|0.0070
4930|Germany Berlin|0.0045
4940|Germany Hamburg|0.0045
4969|Germany Frankfurt|0.0045
4989|Germany Munich|0.0045
4915|Germany Mobile|0.0220
4916|Germany Mobile|0.0230
4917|Germany Mobile|0.0220
51|Peru|0.0150
511|Peru Lima|0.0090
519|Peru Mobile|0.0450
52|Mexico|0.0100
5255|Mexico Mexico City|0.0060
5233|Mexico Guadalajara|0.0070
5281|Mexico Monterrey|0.0070
521|Mexico Mobile|0.0150
53|Cuba|0.6500
535|Cuba Mobile|0.7200
54|Argentina|0.0150
5411|Argentina Buenos Aires|0.0080
549|Argentina Mobile|0.0550
55|Brazil|0.0120
5511|Brazil Sao Paulo|0.0060
5521|Brazil Rio de Janeiro|0.0060
55119|Brazil Sao Paulo Mobile|0.0250
55219|Brazil Rio de Janeiro Mobile|0.0250
56|Chile|0.0150
562|Chile Santiago|0.0080
569|Chile Mobile|0.0250
57|Colombia|0.0120
571|Colombia Bogota|0.0060
573|Colombia Mobile|0.0150
58|Venezuela|0.0500
584|Venezuela Mobile|0.0900
60|Malaysia|0.0150
603|Malaysia Kuala Lumpur|0.0080
601|Malaysia Mobile|0.0200
61|Australia|0.0150
612|Australia Sydney|0.0080
613|Australia Melbourne|0.0080
614|Australia Mobile|0.0300
62|Indonesia|0.0300
6221|Indonesia Jakarta|0.0200
628|Indonesia Mobile|0.0400
63|Philippines|0.1000
632|Philippines Manila|0.0700
639|Philippines Mobile|0.1350
64|New Zealand|0.0200
649|New Zealand Auckland|0.0100
642|New Zealand Mobile|0.0450
65|Singapore|0.0080
656|Singapore|0.0070
658|Singapore Mobile|0.0080
659|Singapore Mobile|0.0080
66|Thailand|0.0200
662|Thailand Bangkok|0.0120
668|Thailand Mobile|0.0250
81|Japan|0.0250
813|Japan Tokyo|0.0150
8190|Japan Mobile|0.0700
8180|Japan Mobile|0.0700
82|South Korea|0.0150
822|South Korea Seoul|0.0100
8210|South Korea Mobile|0.0250
84|Vietnam|0.0650
8424|Vietnam Hanoi|0.0550
849|Vietnam Mobile|0.0700
86|China|0.0120
8610|China Beijing|0.0090
8621|China Shanghai|0.0090
86755|China Shenzhen|0.0090
8613|China Mobile|0.0120
8615|China Mobile|0.0120
8618|China Mobile|0.0120
90|Turkey|0.0200
90212|Turkey Istanbul|0.0120
905|Turkey Mobile|0.0900
91|India|0.0150
9111|India Delhi|0.0120
9122|India Mumbai|0.0120
9180|India Bangalore|0.0120
917|India Mobile|0.0140
918|India Mobile|0.0140
919|India Mobile|0.0140
92|Pakistan|0.0700
9221|Pakistan Karachi|0.0600
923|Pakistan Mobile|0.0800
93|Afghanistan|0.2200
937|Afghanistan Mobile|0.2400
94|Sri Lanka|0.1000
947|Sri Lanka Mobile|0.1100
95|Myanmar|0.2000
98|Iran|0.1100
9821|Iran Tehran|0.0900
989|Iran Mobile|0.1300
212|Morocco|0.1200
2126|Morocco Mobile|0.3000
2127|Morocco Mobile|0.3000
213|Algeria|0.0900
2135|Algeria Mobile|0.5000
2136|Algeria Mobile|0.5000
2137|Algeria Mobile|0.5000
216|Tunisia|0.2200
218|Libya|0.1800
220|Gambia|0.4500
221|Senegal|0.2200
225|Cote d'Ivoire|0.2400
233|Ghana|0.2300
234|Nigeria|0.1100
2341|Nigeria Lagos|0.0900
2348|Nigeria Mobile|0.1200
237|Cameroon|0.2600
243|DR Congo|0.3500
244|Angola|0.1200
249|Sudan|0.3200
251|Ethiopia|0.2500
254|Kenya|0.0900
2547|Kenya Mobile|0.1100
255|Tanzania|0.2400
256|Uganda|0.2000
260|Zambia|0.2400
263|Zimbabwe|0.2800
351|Portugal|0.0070
35121|Portugal Lisbon|0.0045
3519|Portugal Mobile|0.0150
352|Luxembourg|0.0100
353|Ireland|0.0080
3531|Ireland Dublin|0.0050
3538|Ireland Mobile|0.0250
354|Iceland|0.0200
355|Albania|0.1600
356|Malta|0.0200
357|Cyprus|0.0150
358|Finland|0.0150
3589|Finland Helsinki|0.0080
35840|Finland Mobile|0.0400
359|Bulgaria|0.0150
3592|Bulgaria Sofia|0.0090
370|Lithuania|0.0150
371|Latvia|0.0200
372|Estonia|0.0200
373|Moldova|0.1200
374|Armenia|0.0750
37410|Armenia Yerevan|0.0500
37491|Armenia Mobile Beeline|0.1350
37493|Armenia Mobile Ucom|0.1250
37494|Armenia Mobile Ucom|0.1250
37495|Armenia Mobile Ucom|0.1250
37496|Armenia Mobile Beeline|0.1350
37477|Armenia Mobile Viva|0.1300
37499|Armenia Mobile Beeline|0.1350
37433|Armenia Mobile Viva|0.1300
37455|Armenia Mobile Viva|0.1300
375|Belarus|0.1500
37529|Belarus Mobile|0.2600
37533|Belarus Mobile|0.2600
380|Ukraine|0.0800
38044|Ukraine Kyiv|0.0700
38050|Ukraine Mobile|0.1200
38067|Ukraine Mobile|0.1200
381|Serbia|0.0600
385|Croatia|0.0300
386|Slovenia|0.0300
387|Bosnia and Herzegovina|0.1100
389|North Macedonia|0.0900
420|Czech Republic|0.0080
4202|Czech Republic Prague|0.0050
4206|Czech Republic Mobile|0.0200
4207|Czech Republic Mobile|0.0200
421|Slovakia|0.0100
4219|Slovakia Mobile|0.0300
423|Liechtenstein|0.0400
852|Hong Kong|0.0080
853|Macau|0.0300
855|Cambodia|0.0700
856|Laos|0.0600
880|Bangladesh|0.0250
886|Taiwan|0.0150
8869|Taiwan Mobile|0.0450
960|Maldives|0.4000
961|Lebanon|0.1100
962|Jordan|0.1300
963|Syria|0.2100
964|Iraq|0.1000
965|Kuwait|0.0600
966|Saudi Arabia|0.0700
9665|Saudi Arabia Mobile|0.1200
967|Yemen|0.2000
968|Oman|0.1600
970|Palestine|0.1800
971|United Arab Emirates|0.1400
9715|United Arab Emirates Mobile|0.1800
972|Israel|0.0100
9725|Israel Mobile|0.0250
973|Bahrain|0.0900
974|Qatar|0.1300
975|Bhutan|0.0900
976|Mongolia|0.0400
977|Nepal|0.1100
992|Tajikistan|0.1500
993|Turkmenistan|0.1500
994|Azerbaijan|0.1600
99412|Azerbaijan Baku|0.1300
99450|Azerbaijan Mobile|0.2000
995|Georgia|0.0700
99532|Georgia Tbilisi|0.0450
9955|Georgia Mobile|0.1100
996|Kyrgyzstan|0.1000
998|Uzbekistan|0.0900
99871|Uzbekistan Tashkent|0.0800
8816|Thuraya Satellite|1.8000
8817|Thuraya Satellite|1.8000
870|Inmarsat|3.2000
"""


class Policy:
    """How one plan prices the base table."""

    def __init__(
        self,
        name: str,
        factor: str,
        increments: tuple[int, int],
        *,
        mobile_increments: tuple[int, int] | None = None,
        fee: str = "",
        fee_prefixes: tuple[str, ...] = (),
        rise: tuple[str, ...] = (),
        promo: tuple[str, ...] = (),
        overrides: dict[str, str] | None = None,
        catch_all: tuple[str, str, int, int] | None = None,
        zero_conn: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.factor = Decimal(factor)
        self.increments = increments
        self.mobile_increments = mobile_increments or increments
        self.fee = fee
        self.fee_prefixes = fee_prefixes
        self.rise = rise  # codes that get a +10 % row from 2027
        self.promo = promo  # codes with a -30 % promo window in Nov–Dec 2026
        self.overrides = overrides or {}  # code -> exact rate
        self.catch_all = catch_all
        self.zero_conn = zero_conn  # codes billed 0/1 (per second, no minimum)


def _money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))


def render(policy: Policy) -> str:
    """One plan's deck as CSV text."""
    lines = [HEADER]
    if policy.catch_all is not None:
        desc, rate, conn, block = policy.catch_all
        lines.append(f",{desc},{BASE_SINCE},,{rate},,{conn},{block}")
    for raw in PREFIXES.strip().splitlines():
        code, desc, base = raw.split("|")
        rate = Decimal(policy.overrides.get(code, "0")) or Decimal(base) * policy.factor
        mobile = "Mobile" in desc
        conn, block = policy.mobile_increments if mobile else policy.increments
        if code in policy.zero_conn:
            conn, block = 0, 1
        fee = policy.fee if any(code.startswith(p) for p in policy.fee_prefixes) else ""
        quoted = f'"{desc}"' if "," in desc else desc
        lines.append(f"{code},{quoted},{BASE_SINCE},,{_money(rate)},{fee},{conn},{block}")
        if code in policy.promo:
            promo_rate = _money(rate * Decimal("0.7"))
            lines.append(
                f"{code},{quoted} (promo),{PROMO[0]},{PROMO[1]},{promo_rate},,{conn},{block}"
            )
        if code in policy.rise:
            lines.append(
                f"{code},{quoted},{RISE_SINCE},,{_money(rate * Decimal('1.1'))},{fee},"
                f"{conn},{block}"
            )
    return "\n".join(lines) + "\n"


POLICIES = (
    Policy(
        "retail-a",
        "1.45",
        (60, 60),
        mobile_increments=(30, 6),
        fee="0.0100",
        fee_prefixes=("8816", "8817", "870", "53"),
        rise=("7", "79", "7495", "20", "2010"),
        promo=("37491", "37493", "37410", "4420"),
        catch_all=("Rest of world", "0.9000", 60, 60),
    ),
    Policy(
        "retail-b",
        "1.60",
        (30, 6),
        mobile_increments=(6, 6),
        fee="0.0150",
        fee_prefixes=("8816", "8817", "870"),
        rise=("44", "447", "49", "4915"),
        promo=("1", "1212", "91"),
        catch_all=("Rest of world", "1.0000", 30, 6),
    ),
    Policy(
        "wholesale-c",
        "1.12",
        (1, 1),
        rise=("374", "37491", "37493", "86"),
        zero_conn=("1", "1212", "44", "4420", "49", "33", "91", "86"),
        overrides={"535": "0.7300", "8816": "1.8500"},
        catch_all=("Rest of world", "0.7500", 1, 1),
    ),
    Policy(
        "client-std",
        "0.82",
        (6, 6),
        rise=("7", "79", "374"),
        catch_all=("Rest of world", "0.4000", 6, 6),
    ),
    Policy(
        "client-premium",
        "0.93",
        (1, 1),
        # Deliberate negative margin against wholesale-c (1.12): premium routes to Cuba mobile
        # and Thuraya pay more than the wholesale customer is charged.
        overrides={"535": "0.8100", "8816": "1.9900"},
        zero_conn=("1", "44", "49"),
        catch_all=("Rest of world", "0.5000", 1, 1),
    ),
    Policy(
        "reseller-alpha",
        "0.06",
        (60, 60),
        rise=("374",),
        catch_all=("Rest of world", "0.0200", 60, 60),
    ),
    Policy(
        "reseller-beta",
        "0.08",
        (6, 6),
        mobile_increments=(1, 1),
        zero_conn=("1", "44"),
        catch_all=("Rest of world", "0.0300", 6, 6),
    ),
)


def main() -> None:
    """Write every sample deck next to this script."""
    for policy in POLICIES:
        (HERE / f"{policy.name}.csv").write_text(render(policy), encoding="utf-8")


if __name__ == "__main__":
    main()
