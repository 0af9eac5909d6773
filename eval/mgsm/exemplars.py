"""Few-shot exemplars for MGSM, written for CMAAM in each language (the same 8 problems, native wording).

They are not taken from GSM8K or MGSM, so they cannot leak test items. Each ends with the language's
answer marker, the sentence that ``extract_answer`` looks for.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exemplar:
    """One worked problem: question, step-by-step reasoning (without the answer sentence), integer answer."""

    question: str
    reasoning: str
    answer: int


EXEMPLARS: dict[str, tuple[Exemplar, ...]] = {
    "en": (
        Exemplar("Tom has 3 boxes with 12 pencils in each box. He gives away 9 pencils. How many pencils does he "
                 "have left?", "Tom has 3 * 12 = 36 pencils. After giving away 9, he has 36 - 9 = 27 pencils.", 27),
        Exemplar("A bakery sells muffins for $2 each. It sold 45 muffins on Monday and 30 more on Tuesday than on "
                 "Monday. How much money did it make on the two days?",
                 "On Tuesday it sold 45 + 30 = 75 muffins. In total it sold 45 + 75 = 120 muffins, which makes "
                 "120 * 2 = 240 dollars.", 240),
        Exemplar("Mia reads 15 pages a day. Her book has 240 pages. How many days does she need to finish it?",
                 "She needs 240 / 15 = 16 days.", 16),
        Exemplar("A train ticket costs $8 for an adult and half as much for a child. How much do 2 adults and "
                 "3 children pay?", "A child ticket costs 8 / 2 = 4 dollars. The adults pay 2 * 8 = 16 dollars and "
                 "the children pay 3 * 4 = 12 dollars, so together they pay 16 + 12 = 28 dollars.", 28),
        Exemplar("A hall has 5 rows of 14 chairs. 19 chairs are taken. How many chairs are empty?",
                 "There are 5 * 14 = 70 chairs. 70 - 19 = 51 chairs are empty.", 51),
        Exemplar("Leo saves $25 every week. He wants a bike that costs $310 and already has $60. How many weeks "
                 "must he save?", "He still needs 310 - 60 = 250 dollars. That takes 250 / 25 = 10 weeks.", 10),
        Exemplar("A farmer had 1,200 apples. He sold 40% of them and then ate 6. How many apples are left?",
                 "He sold 1,200 * 40 / 100 = 480 apples, leaving 1,200 - 480 = 720. After eating 6, "
                 "720 - 6 = 714 apples are left.", 714),
        Exemplar("A water tank holds 500 liters. It loses 12 liters an hour for 9 hours and is then refilled with "
                 "30 liters. How many liters are in the tank now?",
                 "It loses 12 * 9 = 108 liters, leaving 500 - 108 = 392 liters. After the refill it holds "
                 "392 + 30 = 422 liters.", 422),
    ),
    "ja": (
        Exemplar("健太は鉛筆が12本ずつ入った箱を3箱持っています。9本を友達にあげました。鉛筆は何本残っていますか？",
                 "健太は 3 × 12 = 36 本の鉛筆を持っています。9本あげたので、36 - 9 = 27 本残ります。", 27),
        Exemplar("パン屋はマフィンを1個2ドルで売っています。月曜日に45個売れ、火曜日は月曜日より30個多く売れました。"
                 "2日間でいくら稼ぎましたか？",
                 "火曜日は 45 + 30 = 75 個売れました。合計 45 + 75 = 120 個なので、120 × 2 = 240 ドルです。", 240),
        Exemplar("美咲は1日に15ページ本を読みます。本は240ページあります。読み終えるのに何日かかりますか？",
                 "240 ÷ 15 = 16 日かかります。", 16),
        Exemplar("電車の切符は大人が8ドルで、子どもはその半額です。大人2人と子ども3人ではいくら払いますか？",
                 "子どもの切符は 8 ÷ 2 = 4 ドルです。大人は 2 × 8 = 16 ドル、子どもは 3 × 4 = 12 ドルなので、"
                 "合計 16 + 12 = 28 ドルです。", 28),
        Exemplar("ホールには椅子が14脚ずつ5列並んでいます。19脚が使われています。空いている椅子は何脚ですか？",
                 "椅子は 5 × 14 = 70 脚あります。空いているのは 70 - 19 = 51 脚です。", 51),
        Exemplar("翔太は毎週25ドル貯金します。310ドルの自転車が欲しくて、すでに60ドル持っています。"
                 "何週間貯金する必要がありますか？",
                 "あと 310 - 60 = 250 ドル必要です。250 ÷ 25 = 10 週間かかります。", 10),
        Exemplar("農家はりんごを1,200個持っていました。その40%を売り、そのあと6個食べました。りんごは何個残っていますか？",
                 "売ったのは 1,200 × 40 ÷ 100 = 480 個で、1,200 - 480 = 720 個残ります。6個食べたので、"
                 "720 - 6 = 714 個です。", 714),
        Exemplar("水槽には500リットルの水が入っています。1時間に12リットルずつ9時間減り、そのあと30リットル補充されました。"
                 "水槽には今何リットル入っていますか？",
                 "減ったのは 12 × 9 = 108 リットルで、500 - 108 = 392 リットル残ります。補充後は "
                 "392 + 30 = 422 リットルです。", 422),
    ),
    "zh": (
        Exemplar("小明有3盒铅笔，每盒12支。他送给别人9支。他还剩多少支铅笔？",
                 "小明有 3 × 12 = 36 支铅笔。送出9支后，还剩 36 - 9 = 27 支。", 27),
        Exemplar("一家面包店的松饼每个卖2美元。星期一卖出45个，星期二比星期一多卖30个。这两天一共赚了多少钱？",
                 "星期二卖出 45 + 30 = 75 个。两天一共卖出 45 + 75 = 120 个，赚了 120 × 2 = 240 美元。", 240),
        Exemplar("小丽每天读15页书。她的书有240页。她需要几天读完？", "她需要 240 ÷ 15 = 16 天。", 16),
        Exemplar("一张火车票成人8美元，儿童半价。2个成人和3个儿童一共要付多少钱？",
                 "儿童票是 8 ÷ 2 = 4 美元。成人付 2 × 8 = 16 美元，"
                 "儿童付 3 × 4 = 12 美元，一共 16 + 12 = 28 美元。", 28),
        Exemplar("礼堂里有5排椅子，每排14把。有19把椅子有人坐。空椅子有多少把？",
                 "一共有 5 × 14 = 70 把椅子。空椅子有 70 - 19 = 51 把。", 51),
        Exemplar("小刚每周存25美元。他想买一辆310美元的自行车，已经有60美元。他还要存几周？",
                 "他还需要 310 - 60 = 250 美元，需要 250 ÷ 25 = 10 周。", 10),
        Exemplar("一个农民有1,200个苹果。他卖掉了其中的40%，然后吃了6个。还剩多少个苹果？",
                 "他卖掉了 1,200 × 40 ÷ 100 = 480 个，剩下 1,200 - 480 = 720 个。"
                 "吃掉6个后，还剩 720 - 6 = 714 个。", 714),
        Exemplar("一个水箱装有500升水。它每小时漏掉12升，漏了9小时，然后又加了30升。现在水箱里有多少升水？",
                 "漏掉了 12 × 9 = 108 升，剩下 500 - 108 = 392 升。加水后有 392 + 30 = 422 升。", 422),
    ),
    "ko": (
        Exemplar("민수는 연필이 12자루씩 든 상자 3개를 가지고 있습니다. 친구에게 9자루를 주었습니다. 연필은 몇 자루 "
                 "남았습니까?", "민수는 3 × 12 = 36자루를 가지고 있습니다. 9자루를 주었으므로 36 - 9 = 27자루가 "
                 "남습니다.", 27),
        Exemplar("빵집에서 머핀을 한 개에 2달러에 팝니다. 월요일에 45개를 팔았고 화요일에는 월요일보다 30개를 더 "
                 "팔았습니다. 이틀 동안 번 돈은 얼마입니까?",
                 "화요일에는 45 + 30 = 75개를 팔았습니다. 모두 45 + 75 = 120개이므로 120 × 2 = 240달러를 "
                 "벌었습니다.", 240),
        Exemplar("지은이는 하루에 책을 15쪽씩 읽습니다. 책은 240쪽입니다. 다 읽는 데 며칠이 걸립니까?",
                 "240 ÷ 15 = 16일이 걸립니다.", 16),
        Exemplar("기차표는 어른이 8달러이고 어린이는 그 절반입니다. 어른 2명과 어린이 3명은 모두 얼마를 냅니까?",
                 "어린이 표는 8 ÷ 2 = 4달러입니다. 어른은 2 × 8 = 16달러, 어린이는 3 × 4 = 12달러이므로 "
                 "모두 16 + 12 = 28달러입니다.", 28),
        Exemplar("강당에 의자가 14개씩 5줄 있습니다. 19개의 의자에 사람이 앉아 있습니다. 빈 의자는 몇 개입니까?",
                 "의자는 모두 5 × 14 = 70개입니다. 빈 의자는 70 - 19 = 51개입니다.", 51),
        Exemplar("준호는 매주 25달러를 저축합니다. 310달러짜리 자전거를 사고 싶고 이미 60달러가 있습니다. 몇 주 "
                 "동안 저축해야 합니까?", "310 - 60 = 250달러가 더 필요합니다. 250 ÷ 25 = 10주가 걸립니다.", 10),
        Exemplar("농부는 사과 1,200개를 가지고 있었습니다. 그중 40%를 팔고 6개를 먹었습니다. 사과는 몇 개 "
                 "남았습니까?", "1,200 × 40 ÷ 100 = 480개를 팔아서 1,200 - 480 = 720개가 남았습니다. 6개를 "
                 "먹었으므로 720 - 6 = 714개가 남습니다.", 714),
        Exemplar("물탱크에 물이 500리터 들어 있습니다. 9시간 동안 한 시간에 12리터씩 줄어든 뒤 30리터를 다시 "
                 "채웠습니다. 지금 물탱크에는 몇 리터가 있습니까?",
                 "12 × 9 = 108리터가 줄어 500 - 108 = 392리터가 남았습니다. 다시 채운 뒤에는 392 + 30 = 422리터"
                 "입니다.", 422),
    ),
}
