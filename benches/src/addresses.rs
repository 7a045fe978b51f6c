//! Random-looking lead lists: addresses as real exports hold them (names in
//! several formats, digits, a few capitals, a dozen webmail providers and
//! thousands of company domains), distinct, and deterministic from a seed.
//!
//! Lead lists are not sequential: `lead{n}@example{n % 997}.com` lands every new
//! contact next to the previous one in the store's key order, and imports of such
//! lists measure ten times faster than those of real ones. Benchmarks of imports
//! use these instead.

use std::collections::HashSet;
use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};

/// splitmix64: tiny, fast and good enough to spread addresses and accounts; no
/// dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0), up to a bias of at most n / 2^64.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

/// The words of one of the lists below.
fn words(list: &'static str) -> Vec<&'static str> {
    list.split_whitespace().collect()
}

const FIRST: &str = "\
    james mary john patricia robert jennifer michael linda david elizabeth william barbara \
    richard susan joseph jessica thomas sarah chris karen daniel lisa matthew nancy anthony \
    betty mark sandra donald ashley steven emily paul kimberly andrew donna joshua michelle \
    kenneth carol kevin amanda brian melissa george deborah timothy stephanie ronald \
    rebecca jason laura edward helen jeffrey sharon ryan cynthia jacob kathleen gary amy \
    nicholas angela eric anna jonathan brenda stephen pamela larry emma justin nicole scott \
    samantha brandon katherine benjamin christine samuel debra gregory rachel alexander \
    carolyn patrick janet frank maria raymond olivia jack heather dennis catherine jerry \
    diane tyler julie aaron victoria jose joyce adam lauren nathan kelly henry christina \
    zachary ruth douglas joan peter virginia kyle judith noah evelyn ethan hannah jeremy \
    andrea walter megan christian cheryl keith jacqueline roger madison terry sophia austin \
    teresa sean abigail gerald sara carl gloria harold janice dylan kathryn arthur ann \
    lawrence isabella jordan judy jesse charlotte bryan julia billy grace bruce amber \
    gabriel alice joe jean logan denise alan frances juan danielle albert marilyn willie \
    natalie elijah beverly wayne diana randy brittany vincent theresa mason kayla roy \
    alexis ralph doris bobby lori russell tiffany bradley kelly philip lucas luca giulia \
    marco sofia lukas lena jan anja pierre camille hugo chloe pablo lucia javier elena \
    mohamed fatima wei li yuki hiroshi raj priya arjun ananya olga ivan sven ingrid lars \
    astrid";

const LAST: &str = "\
    smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez \
    lopez gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson \
    white harris sanchez clark ramirez lewis robinson walker young allen king wright scott \
    torres nguyen hill flores green adams nelson baker hall rivera campbell mitchell carter \
    roberts gomez phillips evans turner diaz parker cruz edwards collins reyes stewart \
    morris morales murphy cook rogers gutierrez ortiz morgan cooper peterson bailey reed \
    kelly howard ramos kim cox ward richardson watson brooks chavez wood james bennett gray \
    mendoza ruiz hughes price alvarez castillo sanders patel myers long ross foster jimenez \
    powell jenkins perry russell sullivan bell coleman butler henderson barnes gonzales \
    fisher vasquez simmons romero jordan patterson alexander hamilton graham reynolds \
    griffin wallace moreno west cole hayes bryant herrera gibson ellis tran medina aguilar \
    stevens murray ford castro marshall owens harrison fernandez mcdonald woods washington \
    kennedy wells vargas henry chen freeman webb tucker guzman burns crawford olson simpson \
    porter hunter gordon mendez silva shaw snyder mason dixon munoz hunt hicks holmes \
    palmer wagner black robertson boyd rose stone salazar fox warren mills meyer rice \
    schmidt garza daniels ferguson nichols stephens soto weaver ryan gardner payne grant \
    dunn kelley spencer hawkins arnold pierce vazquez hansen peters santos hart bradley \
    knight elliott cunningham duncan armstrong hudson carroll lane riley andrews alvarado \
    ray delgado berry perkins hoffman johnston matthews pena richards contreras willis \
    carpenter lawrence sandoval muller schneider fischer weber becker rossi russo ferrari \
    esposito bianchi dubois durand lefebvre moreau laurent jansen devries bakker visser \
    nielsen jensen larsen andersen johansson karlsson nilsson kowalski nowak ivanov petrov \
    sato suzuki tanaka wang zhang liu singh kumar sharma gupta khan ali ahmed";

/// Webmail providers: a third of a typical B2C-heavy list.
const WEBMAIL: &str = "\
    gmail.com yahoo.com outlook.com hotmail.com icloud.com aol.com gmx.de web.de orange.fr \
    yandex.ru protonmail.com live.co.uk";

const SYLLABLES: &str = "\
    ac al an ar bel bio blue bright cap cell cloud co core data del dyn east eco en fin \
    flow gen geo green grid hub in ion jet key lab lex line lo logic max med met micro mo \
    net neo nor nova on opt or pay peak ply point pro quant ra red ri rock sen sky soft sol \
    spark star sun sys tech tel ter tri uni val vi vox west wise works zen";

const TLDS: &str = "\
    com com com com net org io co de fr co.uk nl es it com.au ca se ch ai biz";

/// Company domains in a generated list.
pub const COMPANY_DOMAINS: usize = 5_000;

/// An endless stream of distinct random-looking addresses.
#[derive(Debug)]
pub struct Addresses {
    rng: SplitMix64,
    first: Vec<&'static str>,
    last: Vec<&'static str>,
    webmail: Vec<&'static str>,
    domains: Vec<String>,
    /// 64-bit hashes of the addresses given so far, lowercased as the policy
    /// normalises them: a repeat is drawn again.
    seen: HashSet<u64, BuildHasherDefault<DefaultHasher>>,
}

impl Addresses {
    pub fn new(seed: u64) -> Self {
        let mut rng = SplitMix64(seed ^ 0x5eed_1ead_0000_0001);
        let (syllables, tlds) = (words(SYLLABLES), words(TLDS));
        let mut names = HashSet::new();
        let mut domains = Vec::with_capacity(COMPANY_DOMAINS);
        while domains.len() < COMPANY_DOMAINS {
            let parts = 2 + rng.below(2);
            let mut name: String = (0..parts).map(|_| rng.pick(&syllables)).collect();
            if rng.below(8) == 0 {
                name.push('-');
                name.push_str(rng.pick(&syllables));
            }
            let domain = format!("{name}.{}", rng.pick(&tlds));
            if names.insert(domain.clone()) {
                domains.push(domain);
            }
        }
        Self {
            rng,
            first: words(FIRST),
            last: words(LAST),
            webmail: words(WEBMAIL),
            domains,
            seen: HashSet::default(),
        }
    }

    /// An address drawn at random, possibly one given before (the iterator gives
    /// distinct ones).
    pub fn any(&mut self) -> String {
        let rng = &mut self.rng;
        let webmail = rng.below(3) == 0;
        let domain = if webmail {
            rng.pick(&self.webmail)
        } else {
            // A few companies have many contacts, most have a handful.
            let skewed = rng.unit().powi(2);
            &self.domains[(skewed * self.domains.len() as f64) as usize % self.domains.len()]
        };
        let (first, last) = (rng.pick(&self.first), rng.pick(&self.last));
        let initial = &first[..1];
        let mut local = match rng.below(10) {
            0..=2 => format!("{first}.{last}"),
            3 => format!("{first}{last}"),
            4 => format!("{initial}{last}"),
            5 => format!("{initial}.{last}"),
            6 => format!("{first}_{last}"),
            7 => format!("{last}.{first}"),
            8 => first.to_owned(),
            _ => format!("{first}-{last}"),
        };
        // Webmail addresses carry digits more often than work ones.
        if rng.below(if webmail { 2 } else { 6 }) == 0 {
            let digits = match rng.below(3) {
                0 => rng.below(100),
                1 => 1950 + rng.below(60),
                _ => rng.below(100_000),
            };
            local.push_str(&digits.to_string());
        }
        let address = format!("{local}@{domain}");
        if rng.below(20) == 0 {
            // A few lists keep the capitals people typed (the names are ASCII).
            address[..1].to_ascii_uppercase() + &address[1..]
        } else {
            address
        }
    }
}

impl Iterator for Addresses {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        loop {
            let address = self.any();
            let key = self
                .seen
                .hasher()
                .hash_one(address.to_ascii_lowercase().as_str());
            if self.seen.insert(key) {
                return Some(address);
            }
        }
    }
}

/// Writes a CSV of `leads` distinct random addresses (see [`Addresses`]), shaped
/// like a typical export: `first_name,last_name,email,company`.
pub fn write_csv(out: &mut impl std::io::Write, leads: u64, seed: u64) -> std::io::Result<()> {
    writeln!(out, "first_name,last_name,email,company")?;
    for (i, email) in Addresses::new(seed).take(leads as usize).enumerate() {
        writeln!(
            out,
            "Lead,Number {i},{email},\"Company {}, Inc.\"",
            i % 4_999
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_deterministic_and_spread() {
        let a: Vec<String> = Addresses::new(7).take(20_000).collect();
        let b: Vec<String> = Addresses::new(7).take(20_000).collect();
        assert_eq!(a, b);
        assert_ne!(a, Addresses::new(8).take(20_000).collect::<Vec<_>>());
        let lower: HashSet<String> = a.iter().map(|s| s.to_ascii_lowercase()).collect();
        assert_eq!(lower.len(), a.len());
        let domains: HashSet<&str> = a
            .iter()
            .filter_map(|s| s.split_once('@'))
            .map(|(_, d)| d)
            .collect();
        assert!(domains.len() > 2_000, "{} domains", domains.len());
        // Not sequential: neighbours in the list are far apart in byte order.
        let mut sorted = a.clone();
        sorted.sort();
        let in_place = a.iter().zip(&sorted).filter(|(x, y)| x == y).count();
        assert!(in_place < 100, "{in_place} already in order");
        for address in &a {
            let (local, domain) = address.split_once('@').expect("an @");
            assert!(!local.is_empty() && domain.contains('.'), "{address}");
        }
    }
}
